"""``selfkd sweep``: methods × seeds from one recipe, one run folder each, then a comparison."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .flags import add_launcher_flags, add_run_flags, parse_list, run_flags, slurm_options


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="train methods × seeds (skipping finished runs), then compare them",
                              description="Train every method with every seed from one recipe, each run in its own "
                                          "folder <out>/<method>_s<seed>; finished runs are skipped, interrupted "
                                          "ones resumed. Ends with `selfkd compare` of the grid in <out>/report.")
    add_run_flags(p, per_run=False)
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. ce,lightskd,frskd")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--gpus", help="comma-separated GPU ids; one run per listed id at a time (list an id twice to share "
                                  "a GPU between two runs; default: one run at a time on the recipe's device)")
    p.add_argument("--out", help="sweep folder (default runs/sweep_<recipe name>)")
    p.add_argument("--status", action="store_true", help="say, per run, what Slurm and its folder say (its last job "
                                                         "and that job's state, the epochs trained, its log); "
                                                         "changes nothing")
    add_launcher_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..sweep import print_outcome, sweep

    out = Path(args.out) if args.out else Path("runs") / f"sweep_{Path(args.config).stem if args.config else 'default'}"
    methods, seeds = parse_list(args.methods, "methods"), parse_list(args.seeds, "seeds", int)
    if args.status:
        from ..launchers.slurm_sweep import sweep_status

        return sweep_status(args.config, methods, seeds, out, run_flags(args), args.overrides)
    options = slurm_options(args)
    if options is not None:
        from ..launchers.slurm_sweep import submit_sweep

        if args.gpus:
            raise ConfigError("--gpus lists GPUs of this machine for --launcher local; on Slurm give --slurm-gpus N "
                              "(GPUs per node of each run).")
        return submit_sweep(args.config, methods, seeds, out, run_flags(args), args.overrides, options, args.wait)
    result = sweep(args.config, methods, seeds, out, run_flags(args), args.overrides,
                   parse_list(args.gpus, "gpus", unique=False) if args.gpus else None)
    return print_outcome(result, out)
