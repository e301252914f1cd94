"""``selfkd tune --launcher slurm --workers N``: N copies of the same ``selfkd tune`` as one Slurm job array, every
copy a worker of the same studies (one storage: the study folder's SQLite file by default, or ``--storage``: a
database URL, or ``journal:PATH``, Optuna's journal file, on a filesystem the nodes share).

Each worker runs trials until every study's budget is met, then (with ``--final-seeds``) the first worker to get
there retrains and tests the best configurations while the others end. The study folder is the local one plus
``logs/worker<i>.log`` and ``slurm/`` (``jobs.json`` and submitit's folder per job). A worker is requeue-safe: on
Slurm's signal before its time limit (or a preemption) its trials checkpoint and are retried by the requeued worker.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import flag_args
from ..errors import ConfigError
from ..runfolder import SWEEP_SLURM, TUNE, check_own, mark
from .slurm import SlurmOptions, follow, launch_copies


def worker_args(args, flags: dict, out: Path, storage: str, gpus: int = 0) -> list[str]:
    """The ``selfkd tune`` each worker runs: this command's, launched locally, with the recipe, study folder and
    storage given so that they mean the same on every node, and one trial at a time on each of its ``gpus``."""
    argv = ["tune", "--methods", args.methods, "--trials", str(args.trials), "--out", str(out), "--storage", storage,
            "--pruner", args.pruner, "--heartbeat", str(args.heartbeat)]
    if args.config:
        argv += ["-c", str(Path(args.config).absolute())]
    argv += flag_args(flags, args.overrides)
    argv += [a for item in args.space for a in ("--space", item)]
    for option, value in (("--final-seeds", args.final_seeds), ("--sampler-seed", args.sampler_seed)):
        argv += [option, str(value)] if value is not None else []
    argv += ["--gpus", ",".join(map(str, range(gpus)))] if gpus else []
    return argv + ["--resume"] * args.resume


def submit_workers(args, flags: dict, out: Path, storage: str, count: int, options: SlurmOptions,
                   wait: bool = False) -> int:
    """Submit ``count`` workers (those not queued or running already); with ``wait``, follow them to their end.
    Returns the command's exit code (with ``wait``: 1 when a worker failed)."""
    out = out.absolute()
    if options.nodes > 1 or (options.tasks_per_node or 1) > 1:
        raise ConfigError("A tuning worker is one process on one node (its trials are runs of their own), so "
                          "--slurm-nodes and --slurm-tasks-per-node stay 1; give --workers N for more workers.")
    options = options.model_copy(update={"tasks_per_node": 1})
    check_own(out, TUNE)
    launched = launch_copies(worker_args(args, flags, out, storage, options.gpus), count, out, options,
                             f"selfkd-tune-{out.name}")
    mark(out, TUNE, shared=True)  # checked above
    print(f"Tune {out} on Slurm: {count} worker(s) sharing the storage {storage}; {options.describe()}.", flush=True)
    launched.print_submitted()
    if not wait:
        print(f"Follow it with --wait, squeue --me, or the workers' logs in {out / 'logs'}/; the report is written to "
              f"{out / 'report'} as the workers end. Slurm's files: {out / SWEEP_SLURM}/<job id>/.", flush=True)
        return 0

    def outcome(name: str, state: str) -> str | None:
        failure = None if state in ("COMPLETED", "ENDED") else f"Slurm state {state}"
        print(f"[{name}] " + (f"FAILED ({failure}); its log: {out / 'logs' / (name + '.log')}" if failure
                              else "ended"), flush=True)
        return failure

    try:
        ended = follow(launched.jobs, outcome, noun="workers")
    except KeyboardInterrupt:
        print("Stopped following the workers; their jobs go on in Slurm.", file=sys.stderr)
        return 130
    print(f"Report: {out / 'report' / 'index.html'}", flush=True)
    return 0 if all(ended.values()) else 1
