"""Command line: ``selfkd train | eval | list | ...``. Parses arguments and calls the library; nothing else.

User mistakes (:class:`selfkd.errors.SelfKDError`) print one paragraph and exit non-zero.
Each further command lives in its own module exposing ``register(subparsers)``; add it to ``EXTRA``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, SelfKDError

EXTRA: list[str] = ["selfkd.bench", "selfkd.report.compare", "selfkd.sweep", "selfkd.export", "selfkd.demo"]  # modules with register(subparsers)

TRAIN_FLAGS = {  # flag -> dotted config key
    "method": "method.name", "model": "model.name", "dataset": "data.dataset", "data_dir": "data.data_dir",
    "epochs": "train.epochs", "batch_size": "data.batch_size", "device": "train.device",
    "run_dir": "run_dir", "name": "name", "seed": "seed",
}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by commands that build a run from a config (train, sweep, ...)."""
    p.add_argument("-c", "--config", help="YAML recipe (see configs/); defaults apply without one")
    p.add_argument("--method", help="method name (selfkd list methods)")
    p.add_argument("--model", help="backbone name (selfkd list models)")
    p.add_argument("--dataset", help="dataset name (selfkd list datasets)")
    p.add_argument("--data-dir", help="folder holding the dataset (searched before $SELFKD_DATA, ./data, /usr/share/datasets)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (all processes together)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")


def config_from_args(args, base: dict | None = None):
    """Config = recipe (or ``base``) + flags + --set overrides, validated."""
    from .config import build_config, parse_override, read_yaml, set_key

    data = dict(base) if base is not None else (read_yaml(args.config) if args.config else {})
    flags = {key: getattr(args, flag) for flag, key in TRAIN_FLAGS.items() if getattr(args, flag, None) is not None}
    new_method = flags.get("method.name")
    old_method = (data.get("method") or {}).get("name", "ce") if isinstance(data.get("method"), dict) else None
    if new_method and old_method and new_method != old_method:
        dropped = sorted(k for k in data["method"] if k != "name")
        data["method"] = {}
        if dropped:
            print(f"note: --method {new_method} replaces {old_method}; dropped its options {', '.join(dropped)}.",
                  file=sys.stderr)
    for key, value in flags.items():
        set_key(data, key, value)
    for item in args.overrides:
        set_key(data, *parse_override(item))
    return build_config(data, args.config or "the command line")


def cmd_train(args) -> int:
    from .config import read_yaml
    from .engine import train
    from .runfolder import CHECKPOINT, CONFIG

    resume = False
    if args.resume and args.resume != "auto":
        run = Path(args.resume)
        if args.config:
            raise ConfigError("Give either --resume RUN_DIR (its own config is used) or -c CONFIG, not both; "
                              "use --resume auto with -c to resume that config's run if it exists.")
        cfg = config_from_args(args, base=read_yaml(run / CONFIG))
        cfg = cfg.model_copy(update={"run_dir": str(run)})
        resume = True
    else:
        cfg = config_from_args(args)
        resume = args.resume == "auto" and (cfg.run_path / CHECKPOINT).exists()
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    summary = train(cfg, resume=resume, overwrite=args.overwrite)
    final = summary["final"]
    print(f"final test top-1 {final.get('top1', float('nan')):.2f}%  top-5 {final.get('top5', float('nan')):.2f}%  "
          f"NLL {final.get('nll', float('nan')):.4f}  ECE {final.get('ece', float('nan')):.2f}%  "
          f"(last epoch; run folder {cfg.run_path})")
    return 0


def cmd_eval(args) -> int:
    from .evaluation import evaluate_run, evaluate_weights

    if args.run:
        result = evaluate_run(args.run, device=args.device, data_dir=args.data_dir, batch_size=args.batch_size)
    elif args.weights and args.dataset:
        result = evaluate_weights(args.weights, args.dataset, model=args.model, device=args.device,
                                  data_dir=args.data_dir, batch_size=args.batch_size)
    else:
        raise ConfigError("selfkd eval needs --run RUN_DIR, or --weights FILE --dataset NAME [--model NAME].")
    print(json.dumps(result, indent=2))
    return 0


def cmd_list(args) -> int:
    from . import list_datasets, list_methods, list_models

    names = {"models": list_models, "methods": list_methods, "datasets": list_datasets}[args.what]()
    print("\n".join(names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfkd", description="Self-knowledge distillation for image classifiers.")
    parser.add_argument("--version", action="version", version=f"selfkd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one run from a recipe")
    add_run_flags(p)
    p.add_argument("--run-dir", help="run folder (default runs/<name>)")
    p.add_argument("--name", help="run name (default <dataset>_<model>_<method>_s<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue a run from its last checkpoint; 'auto' resumes the config's run if it exists")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config first")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run or a weights file on a test set")
    p.add_argument("--run", help="run folder (uses its config and last checkpoint)")
    p.add_argument("--weights", help="model.safetensors exported by selfkd")
    p.add_argument("--model", help="backbone name (default: read from the weights file)")
    p.add_argument("--dataset")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("list", help="list models, methods or datasets, one per line")
    p.add_argument("what", choices=["models", "methods", "datasets"])
    p.set_defaults(func=cmd_list)

    for module in EXTRA:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except SelfKDError as err:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one message rather than one per process
            print(f"selfkd: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("selfkd: interrupted; nothing after the last saved checkpoint was kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
