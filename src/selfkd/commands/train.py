"""``selfkd train``: one run from a recipe, or the continuation of one (``--resume``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .flags import add_run_flags, run_flags


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train one run from a recipe")
    add_run_flags(p)
    p.add_argument("--run-dir", help="run folder (default runs/<name>)")
    p.add_argument("--name", help="run name (default <dataset>_<model>_<method>_s<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue a run from its last checkpoint; 'auto' resumes the config's run if it exists")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--print-config", action="store_true", help="print the resolved config first")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import make_config, read_yaml
    from ..engine import train
    from ..engine.distributed import env_rank
    from ..runfolder import CHECKPOINT, CONFIG, check_run

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it over; give one of them.")
    if args.resume and args.resume != "auto":
        run_dir = Path(args.resume)
        if args.config:
            raise ConfigError("Give either --resume RUN_DIR (its own config is used) or -c CONFIG, not both; "
                              "use --resume auto with -c to resume that config's run if it exists.")
        if args.run_dir is not None:
            raise ConfigError(f"Give either --resume RUN_DIR (the run folder it continues) or --run-dir, not both: "
                              f"--resume {run_dir} continues the run in {run_dir}.")
        check_run(run_dir, "--resume")
        cfg = make_config(read_yaml(run_dir / CONFIG), {**run_flags(args), "run_dir": str(run_dir)}, args.overrides)
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
    """``final test top-1 93.10%  top-5 99.80%  nll 0.240  ece 1.20%  aurc 8.1  (last epoch; run folder ...)``, or
    with ``train.select: best_val`` ``(epoch 7, best validation top-1 91.20%; ...)``; a run that was not tested
    (``train.eval_test: never``) gives its selected epoch's validation metric."""
    from ..metrics import column, columns
    from ..tasks import DEFAULT_TASK, TASKS

    task, final, selected = summary.get("task", DEFAULT_TASK), summary["final"], summary.get("selected") or {}
    primary = column(TASKS[task].primary)
    name = primary.header.split(" (")[0].lower()
    value = selected.get("value")
    val = f"validation {name} {primary.format(value)}" if isinstance(value, (int, float)) else "no validation split"
    which = (f"epoch {selected.get('epoch')}, best {val}" if selected.get("by") == "best_val"
             else f"last epoch, {val}" if isinstance(value, (int, float)) else "last epoch")
    if not final:
        return f"not tested (train.eval_test: never): {which}  (run folder {run_dir})"
    values = [f"{c.header.split(' (')[0].lower()} {c.format(final.get(c.key, float('nan')))}" for c in columns(task)]
    return f"final test {'  '.join(values)}  ({which}; run folder {run_dir})"
