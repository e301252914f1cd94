"""``selfkd sweep``: train a grid of methods × seeds, one run folder each, then compare them.

The sweep folder (made by selfkd, marked and locked while a sweep runs, or found empty:
:data:`selfkd.runfolder.SWEEP`) holds ``<method>_s<seed>/`` run folders, ``logs/<method>_s<seed>.log`` (each run's
console output, appended across invocations) and ``report/`` (``selfkd compare`` of the grid).
Running the same sweep again skips finished runs (summary.json), resumes interrupted ones (last.pt)
and starts the rest.

Every run is a child process ``python -m selfkd train ...``, also without ``--gpus`` (then one after
another). A process per run keeps runs independent: a crash, an out-of-memory or CUDA error ends
that run only and the sweep goes on; process-wide state set by one run (deterministic algorithms,
cuDNN autotuning, compiled graphs, cached GPU memory) cannot leak into the next; and a sequential
sweep takes the same path as a multi-GPU one. The price is a few seconds of start-up per run.

The runs started at once share the machine's cores: each child gets ``cores // runs at once`` compute threads
(:func:`selfkd.threads.child_thread_env`), so the sweep never runs more CPU threads than cores. After each run a
progress line says how many are done, the time so far and, when the caller estimated the runs' durations (the
demo does), the time left.
"""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import open_nofollow
from .runfolder import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    REPORT,
    SUMMARY,
    SWEEP,
    SWEEP_LOGS,
    SWEEP_REPORT,
    check_own,
    open_folder,
    read_metrics,
    release,
)
from .tasks import DEFAULT_TASK, TASKS
from .threads import child_thread_env


@dataclass
class Job:
    method: str
    seed: int
    run_dir: Path
    action: str  # "skip" (finished), "resume" (last.pt), "restart" (no checkpoint yet), "start"
    train_args: list[str]  # arguments of `selfkd train`
    changed: list[str] = field(default_factory=list)  # settings in which a kept run differs from the recipe
    start_args: list[str] = field(default_factory=list)  # the arguments that start it anew (see :func:`decide`)

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass
class SweepResult:
    jobs: list[Job]
    exit_codes: dict[str, int]  # run name -> exit code of the runs that were launched
    report: object | None  # selfkd.report.Report
    interrupted: bool = False

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if self.exit_codes.get(j.name, 0) != 0]


def plan(config: str | None, methods: list[str], seeds: list[int], out: Path, flags: dict | None = None,
         overrides=(), on_gpus: bool = False) -> list[Job]:
    """One job per (seed, method), seed-major so that a stopped sweep already has every method once.

    Each run's config is built (and so validated) here exactly as the child ``selfkd train`` builds it.
    """
    from .config import flag_args, make_config, read_yaml
    from .engine.setup import run_task
    from .methods import method_class
    from .report.runs import differing_settings

    check_own(out, SWEEP)  # and its report folder: refused before any run rather than after all of them
    check_own(out / SWEEP_REPORT, REPORT)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if on_gpus:
        flags["device"] = "cuda"  # each child sees only its own GPU (CUDA_VISIBLE_DEVICES)
    task = run_task(make_config(config, flags, overrides, quiet=True))
    for method in methods:
        method_class(method, task)  # unknown names fail here, with a "did you mean", before anything runs
    jobs = []
    for seed in seeds:
        for method in methods:
            run_dir = out / f"{method}_s{seed}"
            per_run = {"method": method, "seed": seed, "run_dir": str(run_dir), "name": f"{out.name}_{run_dir.name}"}
            cfg = make_config(config, {**flags, **per_run}, overrides, quiet=True)  # the child prints its own notes
            args = (["-c", str(config)] if config else []) + flag_args({**flags, **per_run}, overrides)
            action, train_args = decide(run_dir, args, on_gpus)
            changed = []
            if action in ("skip", "resume") and (run_dir / CONFIG).is_file():
                changed = differing_settings([read_yaml(run_dir / CONFIG), cfg.to_dict()])
            jobs.append(Job(method, seed, run_dir, action, train_args, changed, args))
    return jobs


def decide(run_dir: Path, start_args: list[str], on_gpus: bool = False) -> tuple[str, list[str]]:
    """What a run of the sweep needs now, from its folder: ``(action, selfkd train arguments)``. ``start_args`` start
    it anew; a finished run is skipped, one with a checkpoint resumed, one that stopped before its first checkpoint
    started over. A Slurm task decides again when it starts (a requeued task resumes)."""
    if (run_dir / SUMMARY).is_file():
        return "skip", start_args
    if (run_dir / CHECKPOINT).is_file():
        return "resume", ["--resume", str(run_dir)] + (["--device", "cuda"] if on_gpus else [])
    if (run_dir / CONFIG).is_file():
        return "restart", start_args + ["--overwrite"]  # it stopped before its first checkpoint
    return "start", start_args


@contextlib.contextmanager
def forward_signals(procs: list, stop: threading.Event):
    """Ctrl-C / SIGTERM: pass the signal to every running child (they checkpoint and stop) and launch
    nothing more. Children run in their own session, so a terminal Ctrl-C reaches them only this way,
    exactly once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _pump(proc, log, prefix: str, when_done) -> None:
    for line in proc.stdout:
        log.write(line)
        log.flush()
        print(prefix + line, end="", flush=True)
    code = proc.wait()
    log.close()
    if when_done is not None:
        when_done(code)


def start_child(argv: list[str], name: str, log_path: Path, slot: str | None, threads: dict, when_done=None,
                preexec_fn=None) -> tuple[subprocess.Popen, threading.Thread]:
    """Start ``python -m selfkd ARGV`` in its own session (on GPU ``slot`` when given, with ``threads``), its output
    appended to ``log_path`` (after a line with the command) and echoed after ``[name] ``; ``when_done(exit code)``
    is called once it ended and its output is all written. Returns the process and the thread that copies its
    output (joined, the log is complete). The one way sweeps and tuning trials start a run."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **threads)
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    command = [sys.executable, "-m", "selfkd", *argv]
    log = os.fdopen(open_nofollow(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a")  # closed by _pump
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}  {' '.join(command[1:])}"
              + (f"  (CUDA_VISIBLE_DEVICES={slot})" if slot is not None else "") + "\n")
    log.flush()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=preexec_fn)
    pump = threading.Thread(target=_pump, args=(proc, log, f"[{name}] ", when_done), daemon=True)
    pump.start()
    return proc, pump


def remaining_s(estimated_left: float, actual_done: float, estimated_done: float, slots: int = 1) -> float:
    """Seconds left: the estimates of the runs not yet finished, scaled by how long the finished runs actually took
    against their estimates (1 before any finished), divided over the runs that go at once."""
    scale = actual_done / estimated_done if actual_done > 0 and estimated_done > 0 else 1.0
    return estimated_left * scale / max(1, slots)


def progress_line(done: int, total: int, elapsed_s: float, left_s: float | None) -> str:
    """``Progress: done 2 of 4 runs, 3.1 min elapsed, about 4.0 min remaining.``"""
    from .report.table import format_duration

    left = f", about {format_duration(left_s)} remaining" if left_s is not None and done < total else ""
    return f"Progress: done {done} of {total} runs, {format_duration(elapsed_s)} elapsed{left}."


def run_jobs(jobs: list[Job], logs: Path, gpus: list[str] | None = None,
             estimates: dict[str, float] | None = None) -> tuple[dict[str, int], bool]:
    """Run the jobs that are not finished, one per GPU at a time (one at a time without GPUs), each with its share
    of the CPU threads; after each, a progress line (with the time left when ``estimates`` gives each run's
    estimated seconds by name).

    Returns ``({run name: exit code}, interrupted)``.
    """
    slots: list[str | None] = list(gpus) if gpus else [None]
    pending = [j for j in jobs if j.action != "skip"]
    logs.mkdir(parents=True, exist_ok=True)
    done: queue.Queue = queue.Queue()
    procs: list[subprocess.Popen] = []
    busy: dict[str, int] = {}  # run name -> index into slots
    codes: dict[str, int] = {}
    stop = threading.Event()
    threads = child_thread_env(len(slots))
    began, launched = time.monotonic(), {}  # run name -> its start time
    took: dict[str, float] = {}  # run name -> seconds, of the runs that finished well
    with forward_signals(procs, stop):
        while busy or (pending and not stop.is_set()):
            while pending and not stop.is_set() and len(busy) < len(slots):
                index = next(i for i in range(len(slots)) if i not in busy.values())
                job = pending.pop(0)
                procs.append(_launch(job, slots[index], logs, threads, done))
                busy[job.name], launched[job.name] = index, time.monotonic()
            job, code = done.get()
            busy.pop(job.name)
            codes[job.name] = code
            if code == 0:
                took[job.name] = time.monotonic() - launched[job.name]
            print_run_outcome(job, logs / f"{job.name}.log", f"exit code {code}" if code else None)
            left = None
            if estimates:
                unfinished = [j.name for j in pending] + list(busy)  # a running run counts in full
                left = remaining_s(sum(estimates.get(n, 0.0) for n in unfinished), sum(took.values()),
                                   sum(estimates.get(n, 0.0) for n in took), len(slots))
            print(progress_line(len(codes), len(codes) + len(busy) + len(pending), time.monotonic() - began, left),
                  flush=True)
    return codes, stop.is_set()


def _launch(job: Job, slot: str | None, logs: Path, threads: dict, done: queue.Queue) -> subprocess.Popen:
    """Start ``selfkd train`` for ``job`` (:func:`start_child`); ``done`` gets ``(job, exit code)`` when it ends."""
    print(f"[{job.name}] {job.action}" + (f" on GPU {slot}" if slot is not None else "")
          + f"; log {logs / (job.name + '.log')}", flush=True)
    return start_child(["train", *job.train_args], job.name, logs / f"{job.name}.log", slot, threads,
                       lambda code: done.put((job, code)))[0]


def print_run_outcome(job: Job, log: Path, failure: str | None) -> None:
    """``[run] finished: test top1 ...`` or, with ``failure`` (why, e.g. "exit code 2"), ``[run] FAILED (...)`` and
    the last lines of its log."""
    if failure is None:
        print(f"[{job.name}] {run_state(job.run_dir)}", flush=True)
        return
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
    print(f"[{job.name}] FAILED ({failure}); last lines of {log}:", *("    " + t for t in tail), sep="\n", flush=True)


def run_state(run_dir: Path) -> str:
    """Where a run stands, by its folder: ``finished: test top1 93.10% (last epoch)``, ``3 of 10 epochs trained,
    checkpoint saved``, ``started, no checkpoint yet`` or ``not started``."""
    import json

    from .config import read_yaml
    from .errors import SelfKDError

    if (run_dir / SUMMARY).is_file():
        try:
            summary = json.loads((run_dir / SUMMARY).read_text())
            key = TASKS[summary.get("task", DEFAULT_TASK)].primary  # top1, miou
            return f"finished: test {key} {summary.get('final', {}).get(key, float('nan')):.2f}% (last epoch)"
        except (OSError, ValueError, KeyError):
            return "finished"
    if (run_dir / CHECKPOINT).is_file():
        rows = read_metrics(run_dir / METRICS)
        try:
            epochs = read_yaml(run_dir / CONFIG).get("train", {}).get("epochs", "?")
        except (SelfKDError, AttributeError):
            epochs = "?"
        return f"{rows[-1]['epoch'] if rows else 0} of {epochs} epochs trained, checkpoint saved"
    return "started, no checkpoint yet" if (run_dir / CONFIG).is_file() else "not started"


def sweep(config: str | None, methods: list[str], seeds: list[int], out: str | Path, flags: dict | None = None,
          overrides=(), gpus: list[str] | None = None, note: str | None = None,
          estimates: dict[str, float] | None = None) -> SweepResult:
    """Plan, run and compare the grid; see the module docstring. ``estimates``: each run's estimated seconds by
    name, for the time left in the progress lines."""
    out = Path(out)
    jobs = plan(config, methods, seeds, out, flags, overrides, on_gpus=bool(gpus))
    where = f"{len(gpus)} at a time on GPUs {','.join(gpus)}" if gpus else "one after another"
    where += f", {child_thread_env(len(gpus) if gpus else 1)['OMP_NUM_THREADS']} CPU thread(s) each"
    print_plan(jobs, out, len(methods), len(seeds), where)
    lock = open_folder(out, SWEEP, lambda marked: check_own(out, SWEEP, marked))
    try:
        codes, interrupted = run_jobs(jobs, out / SWEEP_LOGS, gpus, estimates)
        report = write_report(jobs, out, note)
    finally:
        release(lock)
    return SweepResult(jobs, codes, report, interrupted)


def print_plan(jobs: list[Job], out: Path, methods: int, seeds: int, where: str, active=()) -> None:
    """The sweep's first line (how many runs are finished, to resume, to start; the runs named in ``active``, queued
    or running on a cluster already, counted apart) and a note for each kept run started with other settings."""
    counts = {a: sum(j.action == a and j.name not in active for j in jobs) for a in ("skip", "resume", "restart",
                                                                                      "start")}
    queued = f"{len(active)} queued or running already, " if active else ""
    print(f"Sweep {out}: {len(jobs)} runs ({methods} methods × {seeds} seeds) — {counts['skip']} finished, {queued}"
          f"{counts['resume']} to resume, {counts['start'] + counts['restart']} to start; {where}.", flush=True)
    for job in jobs:
        if job.changed:
            state = "finished and kept" if job.action == "skip" else "resumed with its own settings"
            print(f"note: {job.run_dir} was started with other settings than this sweep gives "
                  f"({', '.join(job.changed)}); it is {state}. Delete the folder to run it anew.", flush=True)


def write_report(jobs: list[Job], out: Path, note: str | None = None):
    """``selfkd compare`` of the grid's run folders into ``<out>/report`` (None when no run has a folder yet)."""
    from .report import compare
    from .report.runs import is_run_dir

    existing = [j.run_dir for j in jobs if j.run_dir.is_dir() and is_run_dir(j.run_dir)]
    return (compare(existing, out / SWEEP_REPORT, note=note, title=f"selfkd sweep {out.name}", overwrite=True)
            if existing else None)


def print_outcome(result: SweepResult, out: Path) -> int:
    """Print the comparison and what failed; the exit code of the sweep (0, 1 if a run failed, 130)."""
    if result.report is not None:
        print("\n" + result.report.text, end="")
        print(f"\nReport: {result.report.out / 'index.html'}")
    if result.interrupted:
        print("Sweep interrupted; run the same command again to resume it.", file=sys.stderr)
        return 130
    if result.failed:
        logs = out / SWEEP_LOGS
        print(f"{len(result.failed)} run(s) failed: " + ", ".join(f"{j.name} (log {logs / (j.name + '.log')})"
                                                               for j in result.failed), file=sys.stderr)
        return 1
    return 0


