"""Command line: ``selfkd train | eval | list | ...``. Parses arguments and calls the library; nothing else.

User mistakes (:class:`selfkd.errors.SelfKDError`) print one paragraph and exit non-zero. Under torchrun an error
every process raised alike is printed once (by rank 0), any other by the process that raised it, after ``[rank N]``.
Each further command lives in its own module exposing ``register(subparsers)``; add it to ``EXTRA``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import ConfigError, SelfKDError, SelfKDWarning
from .registry import TASK_NAMES

EXTRA: list[str] = ["selfkd.bench", "selfkd.report.compare", "selfkd.sweep", "selfkd.export", "selfkd.demo"]  # modules with register(subparsers)

def add_run_flags(p: argparse.ArgumentParser, per_run: bool = True) -> None:
    """Flags of commands that build runs from a recipe (train; sweep and demo without the per-run ones)."""
    p.add_argument("-c", "--config", help="YAML recipe (see configs/); defaults apply without one")
    if per_run:
        p.add_argument("--method", help="method name (selfkd list methods)")
        p.add_argument("--seed", type=int)
    p.add_argument("--model", help="backbone name (selfkd list models)")
    p.add_argument("--dataset", help="dataset name (selfkd list datasets)")
    p.add_argument("--data-dir", help="folder holding the dataset, used alone (without it: $SELFKD_DATA, ./data, "
                                      "/usr/share/datasets are searched)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (all processes together)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=0.05 (repeatable)")


def run_flags(args) -> dict:
    """The config flags given on the command line (see :data:`selfkd.config.FLAG_KEYS`)."""
    from .config import FLAG_KEYS

    return {flag: getattr(args, flag) for flag in FLAG_KEYS if getattr(args, flag, None) is not None}


def cmd_train(args) -> int:
    from .config import make_config, read_yaml
    from .engine import train
    from .engine.distributed import env_rank
    from .runfolder import CHECKPOINT, CONFIG, check_run

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it over; give one of them.")
    if args.resume and args.resume != "auto":
        run = Path(args.resume)
        if args.config:
            raise ConfigError("Give either --resume RUN_DIR (its own config is used) or -c CONFIG, not both; "
                              "use --resume auto with -c to resume that config's run if it exists.")
        if args.run_dir is not None:
            raise ConfigError(f"Give either --resume RUN_DIR (the run folder it continues) or --run-dir, not both: "
                              f"--resume {run} continues the run in {run}.")
        check_run(run, "--resume")
        cfg = make_config(read_yaml(run / CONFIG), {**run_flags(args), "run_dir": str(run)}, args.overrides)
        resume = True
    else:
        cfg = make_config(args.config, run_flags(args), args.overrides)
        resume = args.resume == "auto" and (cfg.run_path / CHECKPOINT).exists()
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    summary = train(cfg, resume=resume, overwrite=args.overwrite)
    if env_rank() == 0:  # under torchrun, the main process's line (it holds the results)
        print(final_line(summary, cfg.run_path))
    return 0


def final_line(summary: dict, run_dir) -> str:
    """``final test top-1 93.10%  top-5 99.80%  nll 0.240  ece 1.20%  aurc 8.1  (last epoch; run folder ...)``."""
    from .metrics import columns

    final = summary["final"]
    values = [f"{c.header.split(' (')[0].lower()} {c.format(final.get(c.key, float('nan')))}"
              for c in columns(summary.get("task", "classification"))]
    return f"final test {'  '.join(values)}  (last epoch; run folder {run_dir})"


def cmd_eval(args) -> int:
    from .evaluation import evaluate_run, evaluate_weights

    if args.run and args.weights:
        raise ConfigError("Give selfkd eval either --run RUN_DIR or --weights FILE, not both.")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give the number of test images per batch (at least 1), "
                          "or leave it out for the run's own.")
    if args.run:
        result = evaluate_run(args.run, device=args.device, data_dir=args.data_dir, batch_size=args.batch_size,
                              dataset=args.dataset, model=args.model)
    elif args.weights and args.dataset:
        result = evaluate_weights(args.weights, args.dataset, model=args.model, device=args.device,
                                  data_dir=args.data_dir, batch_size=args.batch_size)
    else:
        raise ConfigError("selfkd eval needs --run RUN_DIR, or --weights FILE --dataset NAME [--model NAME].")
    print(json.dumps(result, indent=2))
    return 0


def cmd_list(args) -> int:
    """Names one per line (methods and datasets of one task); models with their task and parameter count."""
    from .data.datasets import dataset_task, list_datasets
    from .methods import list_methods
    from .models import list_models

    if args.what == "methods":
        print("\n".join(list_methods(args.task or "classification")))
    elif args.what == "datasets":
        print("\n".join(n for n in list_datasets() if args.task in (None, dataset_task(n))))
    else:
        tasks = [args.task] if args.task else TASK_NAMES
        for task in tasks:
            for name in list_models(task):
                print(f"{name:<28}{task:<16}{model_parameters(name, task):>14,}")
    return 0


def model_parameters(name: str, task: str) -> int:
    """Parameters of a registered model with its defaults (K = 100 classes, or 21 for segmentation: VOC), counted
    on the meta device (nothing is allocated)."""
    import torch

    from .models import create_model

    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, num_classes=21 if task == "segmentation" else 100).parameters())


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

    p = sub.add_parser("list", help="list methods or datasets (one per line) or models (task, parameters)")
    p.add_argument("what", choices=["models", "methods", "datasets"])
    p.add_argument("--task", choices=TASK_NAMES,
                   help="methods: of this task (default classification); models, datasets: only this task's")
    p.set_defaults(func=cmd_list)

    for module in EXTRA:
        importlib.import_module(module).register(sub)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning) -> None:
    """selfkd's own warnings as one ``selfkd: warning:`` paragraph (no source line); others as Python shows them."""
    if issubclass(category, SelfKDWarning):
        print(f"selfkd: warning: {message}", file=file or sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = show_warning
    try:
        return args.func(args) or 0
    except SelfKDError as err:
        from .engine.distributed import env_rank

        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            print(f"selfkd: error: {err}", file=sys.stderr)
        elif not err.agreed:  # under torchrun: raised by this process alone, which says so
            print(f"[rank {env_rank()}] selfkd: error: {err}", file=sys.stderr)
        elif env_rank() == 0:  # raised alike by every process: said once
            print(f"selfkd: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("selfkd: interrupted (Ctrl-C); nothing more was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
