"""``selfkd tune``: an Optuna study per method on the validation metric, then the best configuration of each as a
recipe, retrained with final seeds and tested once."""
from __future__ import annotations

import shlex
from pathlib import Path

from ..errors import ConfigError
from .flags import add_launcher_flags, add_run_flags, parse_list, run_flags, slurm_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="tune methods on validation data (Optuna), then retrain and test the best of each",
        description="Tune each method's hyperparameters with the same budget of trials on the validation split of "
                    "the recipe (data.val_split), an Optuna study per method: each trial is a run folder "
                    "<out>/<method>/trial_<n>, pruned on its per-epoch validation metric. Then the best configuration "
                    "of each is written as <out>/<method>/best.yaml, retrained with --final-seeds and tested once, "
                    "and compared in <out>/report. Run the same command again (or on more machines with --storage) "
                    "to continue the studies with more workers.")
    add_run_flags(p, per_run=False)
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. ce,lightskd")
    p.add_argument("--trials", type=int, required=True, help="the budget: finished (complete or pruned) trials per "
                                                              "method, over every worker")
    p.add_argument("--space", action="append", default=[], metavar="KEY=LOW:HIGH[:log] | KEY=a,b,c",
                   help="search a config key (optim.lr), method option (method.temperature) or model option too, "
                        "in a range (on a log scale with :log) or among values; replaces a method's default range of "
                        "the key (repeatable)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage shared by the workers: sqlite:///FILE, "
                                                    "postgresql://..., mysql://..., or journal:PATH (default: "
                                                    "<out>/study.db)")
    p.add_argument("--out", help="study folder (default runs/tune_<recipe name>)")
    p.add_argument("--final-seeds", help="comma-separated seeds to retrain and test each best configuration with, "
                                         "once every study is over")
    p.add_argument("--gpus", help="comma-separated GPU ids; one trial per listed id at a time")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                   help="prune trials on their per-epoch validation metric (default median)")
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: none; give it for a "
                                                    "repeatable study with one worker)")
    p.add_argument("--heartbeat", type=int, default=30, help="seconds between a worker's heartbeats; a trial whose "
                                                             "worker is silent twice as long is retried (default 30)")
    p.add_argument("--resume", action="store_true", help="continue existing studies as they were made (their own "
                                                         "recipe, search space and objective)")
    p.add_argument("--workers", type=int, help="with --launcher slurm: how many copies of this command run the "
                                               "studies together, as one job array (default 1)")
    add_launcher_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..tune import print_outcome, tune

    for flag, value in (("--trials", args.trials), ("--heartbeat", args.heartbeat)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: give a positive number.")
    out = Path(args.out) if args.out else Path("runs") / f"tune_{Path(args.config).stem if args.config else 'default'}"
    seeds = parse_list(args.final_seeds, "final-seeds", int) if args.final_seeds else None
    gpus = parse_list(args.gpus, "gpus", unique=False) if args.gpus else None
    options = slurm_options(args)
    if options is not None:
        return _on_slurm(args, out, options)
    if args.workers is not None:
        raise ConfigError("--workers applies to --launcher slurm. On this machine, run the same command in more "
                          "shells (with the same --out or --storage) for more workers, or give --gpus.")
    command = "selfkd " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["tune"]))
    result = tune(args.config, parse_list(args.methods, "methods"), args.trials, args.space, out, run_flags(args),
                  args.overrides, args.storage, gpus, seeds, args.resume, args.pruner, args.sampler_seed,
                  args.heartbeat, command)
    return print_outcome(result)


def _on_slurm(args, out: Path, options) -> int:
    """Check the studies as a local tune would, then submit --workers copies of the command to Slurm."""
    from ..launchers.slurm_tune import submit_workers
    from ..tune import definitions
    from ..tune.study import storage_url

    if args.gpus:
        raise ConfigError("--gpus lists GPUs of this machine for --launcher local; on Slurm give --slurm-gpus N (GPUs "
                          "of each worker, one trial per GPU at a time).")
    workers = 1 if args.workers is None else args.workers
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give a positive number.")
    if args.config or not args.resume:
        definitions(args.config, parse_list(args.methods, "methods"), args.space, run_flags(args), args.overrides)
    return submit_workers(args, run_flags(args), out, storage_url(args.storage, out.absolute()), workers, options,
                          args.wait)
