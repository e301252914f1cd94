"""``selfkd sweep --launcher slurm``: the sweep's runs as one Slurm job array, one task per run folder, each running
the ``selfkd train`` it runs locally; and ``selfkd sweep --status``.

The sweep folder is the local sweep's (``<method>_s<seed>/`` run folders, ``logs/<run>.log``, ``report/``) plus
``slurm/``: ``jobs.json`` (the job ids of each run) and submitit's folder per job (``<job id>/``: the job script,
the pickled task, Slurm's output). It must be on a filesystem the compute nodes share. A task decides what its run
needs when it starts (:func:`selfkd.sweep.decide`), so a requeued task resumes its run; submitting the same sweep
again skips finished runs and runs queued or running already, and resumes or starts the rest.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..runfolder import SUMMARY, SWEEP, SWEEP_SLURM, mark
from ..sweep import (
    Job,
    SweepResult,
    decide,
    plan,
    print_outcome,
    print_plan,
    print_run_outcome,
    run_state,
    write_report,
)
from .slurm import SelfkdTask, SlurmOptions, check_slurm, follow, job_states, launch, read_records


class SweepRunTask(SelfkdTask):
    """A sweep run's task: ``selfkd train`` with what its folder needs when the task starts (nothing once finished)."""

    def __init__(self, job: Job, on_gpus: bool, log: Path):
        super().__init__(job.start_args, log)
        self.run_dir, self.on_gpus = str(job.run_dir), on_gpus

    def arguments(self) -> list[str] | None:
        action, args = decide(Path(self.run_dir), self.args, self.on_gpus)
        return None if action == "skip" else ["train", *args]


def submit_sweep(config: str | None, methods: list[str], seeds: list[int], out: Path, flags: dict | None,
                 overrides, options: SlurmOptions, wait: bool = False) -> int:
    """Submit the runs that are not finished and not queued or running already; with ``wait`` (or when nothing is
    left to wait for) follow them to the end, compare the grid and return the sweep's exit code (0, 1 if a run
    failed); otherwise return 0 once submitted."""
    out = Path(out)
    jobs = plan(config, methods, seeds, out, flags, overrides, on_gpus=options.gpus > 0)
    logs = out.absolute() / "logs"
    tasks = {j.name: SweepRunTask(j, options.gpus > 0, logs / f"{j.name}.log") for j in jobs if j.action != "skip"}
    launched = launch(tasks, out / SWEEP_SLURM, options, f"selfkd-sweep-{out.name}")
    mark(out, SWEEP)  # plan() checked it
    print_plan(jobs, out, len(methods), len(seeds), f"on Slurm, {options.describe()}", launched.active)
    launched.print_submitted()
    if launched.jobs and not wait:
        print("Follow it with the same command and --status (each run) or --wait (until it ends), or with squeue --me. "
              f"Run logs: {out / 'logs'}/; Slurm's files: {out / 'slurm'}/<job id>/.", flush=True)
        return 0
    return _follow_and_compare(jobs, out, launched.jobs)


def _follow_and_compare(jobs: list[Job], out: Path, followed: dict[str, str]) -> int:
    by_name = {j.name: j for j in jobs}

    def outcome(name: str, state: str) -> str | None:
        job = by_name[name]
        failure = None if (job.run_dir / SUMMARY).is_file() else f"Slurm state {state}"
        print_run_outcome(job, out / "logs" / f"{name}.log", failure)
        return failure

    try:
        succeeded = follow(followed, outcome, total=len(jobs)) if followed else {}
    except KeyboardInterrupt:
        print("Stopped following the sweep; its jobs go on in Slurm. Follow them again with --wait or --status.",
              file=sys.stderr)
        return 130
    codes = {name: 0 if ok else 1 for name, ok in succeeded.items()}
    return print_outcome(SweepResult(jobs, codes, write_report(jobs, out)), out)


def sweep_status(config: str | None, methods: list[str], seeds: list[int], out: Path, flags: dict | None,
                 overrides) -> int:
    """Print, per run, its last Slurm job and that job's state, where its folder stands and its log. Changes
    nothing."""
    out = Path(out)
    jobs = plan(config, methods, seeds, out, flags, overrides)
    records = read_records(out / "slurm")
    latest = {j.name: records[j.name][-1] for j in jobs if records.get(j.name)}
    if latest:
        check_slurm()
    states = job_states(latest.values()) if latest else {}
    rows = [("run", "Slurm job", "run folder", "log")]
    rows += [(j.name, f"{latest[j.name]} {states[latest[j.name]]}" if j.name in latest else "-", run_state(j.run_dir),
              str(out / "logs" / f"{j.name}.log")) for j in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"Sweep {out}: {len(jobs)} runs" + (f"; Slurm's files in {out / 'slurm'}/<job id>/" if latest else "") + ".")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    return 0
