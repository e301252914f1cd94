"""``selfkd sweep``: train a grid of methods × seeds, one run folder each, then compare them.

The sweep folder holds ``<method>_s<seed>/`` run folders, ``logs/<method>_s<seed>.log`` (each run's
console output, appended across invocations) and ``report/`` (``selfkd compare`` of the grid).
Running the same sweep again skips finished runs (summary.json), resumes interrupted ones (last.pt)
and starts the rest.

Every run is a child process ``python -m selfkd train ...``, also without ``--gpus`` (then one after
another). A process per run keeps runs independent: a crash, an out-of-memory or CUDA error ends
that run only and the sweep goes on; process-wide state set by one run (deterministic algorithms,
cuDNN autotuning, compiled graphs, cached GPU memory) cannot leak into the next; and a sequential
sweep takes the same path as a multi-GPU one. The price is a few seconds of start-up per run.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .runfolder import CHECKPOINT, CONFIG, SUMMARY

RUN_FLAGS = ("model", "dataset", "data_dir", "epochs", "batch_size", "device")  # passed on to `selfkd train`


@dataclass
class Job:
    method: str
    seed: int
    run_dir: Path
    action: str  # "skip" (finished), "resume" (last.pt), "restart" (no checkpoint yet), "start"
    train_args: list[str]  # arguments of `selfkd train`
    changed: list[str] = field(default_factory=list)  # settings in which a kept run differs from the recipe

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


def parse_list(text: str, what: str, cast=str, unique: bool = True) -> list:
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        values = [cast(s) for s in items]
    except ValueError:
        raise ConfigError(f"--{what} expects a comma-separated list such as {'0,1,2' if cast is int else 'ce,ls'}, "
                          f"got '{text}'.") from None
    if not values:
        raise ConfigError(f"--{what} is empty; give at least one value.")
    if unique and len(set(values)) != len(values):
        raise ConfigError(f"--{what} lists a value twice: '{text}'.")
    return values


def plan(config: str | None, methods: list[str], seeds: list[int], out: Path, flags: dict | None = None,
         overrides=(), on_gpus: bool = False) -> list[Job]:
    """One job per (seed, method), seed-major so that a stopped sweep already has every method once.

    Each run's config is built (and so validated) here exactly as the child ``selfkd train`` builds it.
    """
    from .cli import config_from_args
    from .config import read_yaml
    from .methods import METHODS
    from .report.runs import differing_settings

    for method in methods:
        METHODS.get(method)  # unknown names fail here, with a "did you mean", before anything runs
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if on_gpus:
        flags["device"] = "cuda"  # each child sees only its own GPU (CUDA_VISIBLE_DEVICES)
    jobs = []
    for seed in seeds:
        for method in methods:
            run_dir = out / f"{method}_s{seed}"
            name = f"{out.name}_{run_dir.name}"
            ns = argparse.Namespace(config=config, overrides=list(overrides), method=method, seed=seed,
                                    run_dir=str(run_dir), name=name, **flags)
            with contextlib.redirect_stderr(io.StringIO()):  # the child prints its own notes
                cfg = config_from_args(ns)
            args = (["-c", str(config)] if config else [])
            args += [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
            args += ["--method", method, "--seed", str(seed), "--run-dir", str(run_dir), "--name", name]
            args += [a for item in overrides for a in ("--set", item)]
            if (run_dir / SUMMARY).is_file():
                action = "skip"
            elif (run_dir / CHECKPOINT).is_file():
                action = "resume"
                args = ["--resume", str(run_dir)] + (["--device", "cuda"] if on_gpus else [])
            elif (run_dir / CONFIG).is_file():
                action, args = "restart", args + ["--overwrite"]  # it stopped before its first checkpoint
            else:
                action = "start"
            changed = []
            if action in ("skip", "resume") and (run_dir / CONFIG).is_file():
                changed = differing_settings([read_yaml(run_dir / CONFIG), cfg.to_dict()])
            jobs.append(Job(method, seed, run_dir, action, args, changed))
    return jobs


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


def _pump(proc, log, prefix: str, done: queue.Queue, job: Job) -> None:
    for line in proc.stdout:
        log.write(line)
        log.flush()
        print(prefix + line, end="", flush=True)
    done.put((job, proc.wait()))
    log.close()


def run_jobs(jobs: list[Job], logs: Path, gpus: list[str] | None = None) -> tuple[dict[str, int], bool]:
    """Run the jobs that are not finished, one per GPU at a time (one at a time without GPUs).

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
    with forward_signals(procs, stop):
        while busy or (pending and not stop.is_set()):
            while pending and not stop.is_set() and len(busy) < len(slots):
                index = next(i for i in range(len(slots)) if i not in busy.values())
                slot, job = slots[index], pending.pop(0)
                env = dict(os.environ, PYTHONUNBUFFERED="1")
                if slot is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slot
                command = [sys.executable, "-m", "selfkd", "train", *job.train_args]
                log = open(logs / f"{job.name}.log", "a")
                log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}  {' '.join(command[1:])}"
                          + (f"  (CUDA_VISIBLE_DEVICES={slot})" if slot is not None else "") + "\n")
                print(f"[{job.name}] {job.action}" + (f" on GPU {slot}" if slot is not None else "")
                      + f"; log {logs / (job.name + '.log')}", flush=True)
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, start_new_session=True)
                procs.append(proc)
                busy[job.name] = index
                threading.Thread(target=_pump, args=(proc, log, f"[{job.name}] ", done, job), daemon=True).start()
            job, code = done.get()
            busy.pop(job.name)
            codes[job.name] = code
            _print_outcome(job, code, logs / f"{job.name}.log")
    return codes, stop.is_set()


def _print_outcome(job: Job, code: int, log: Path) -> None:
    import json

    if code == 0:
        try:
            final = json.loads((job.run_dir / SUMMARY).read_text()).get("final", {})
            print(f"[{job.name}] finished: test top-1 {final.get('top1', float('nan')):.2f}% (last epoch)", flush=True)
        except (OSError, ValueError):
            print(f"[{job.name}] finished", flush=True)
        return
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
    print(f"[{job.name}] FAILED (exit code {code}); last lines of {log}:", *("    " + t for t in tail), sep="\n",
          flush=True)


def sweep(config: str | None, methods: list[str], seeds: list[int], out: str | Path, flags: dict | None = None,
          overrides=(), gpus: list[str] | None = None, note: str | None = None) -> SweepResult:
    """Plan, run and compare the grid; see the module docstring."""
    from .report import compare
    from .report.runs import is_run_dir

    out = Path(out)
    jobs = plan(config, methods, seeds, out, flags, overrides, on_gpus=bool(gpus))
    counts = {a: sum(j.action == a for j in jobs) for a in ("skip", "resume", "restart", "start")}
    where = f"{len(gpus)} at a time on GPUs {','.join(gpus)}" if gpus else "one after another"
    print(f"Sweep {out}: {len(jobs)} runs ({len(methods)} methods × {len(seeds)} seeds) — {counts['skip']} finished, "
          f"{counts['resume']} to resume, {counts['start'] + counts['restart']} to start; {where}.", flush=True)
    for job in jobs:
        if job.changed:
            state = "finished and kept" if job.action == "skip" else "resumed with its own settings"
            print(f"note: {job.run_dir} was started with other settings than this sweep gives "
                  f"({', '.join(job.changed)}); it is {state}. Delete the folder to run it anew.", flush=True)
    codes, interrupted = run_jobs(jobs, out / "logs", gpus)
    existing = [j.run_dir for j in jobs if j.run_dir.is_dir() and is_run_dir(j.run_dir)]
    report = compare(existing, out / "report", note=note, title=f"selfkd sweep {out.name}") if existing else None
    return SweepResult(jobs, codes, report, interrupted)


def print_outcome(result: SweepResult, out: Path) -> int:
    """Print the comparison and what failed; the exit code of the sweep (0, 1 if a run failed, 130)."""
    if result.report is not None:
        print("\n" + result.report.text, end="")
        print(f"\nReport: {result.report.out / 'index.html'}")
    if result.interrupted:
        print("Sweep interrupted; run the same command again to resume it.", file=sys.stderr)
        return 130
    if result.failed:
        print(f"{len(result.failed)} run(s) failed: " + ", ".join(f"{j.name} (log {out / 'logs' / (j.name + '.log')})"
                                                               for j in result.failed), file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args) -> int:
    out = Path(args.out) if args.out else Path("runs") / f"sweep_{Path(args.config).stem if args.config else 'default'}"
    result = sweep(args.config, parse_list(args.methods, "methods"), parse_list(args.seeds, "seeds", int), out,
                   {k: getattr(args, k) for k in RUN_FLAGS}, args.overrides,
                   parse_list(args.gpus, "gpus", unique=False) if args.gpus else None)
    return print_outcome(result, out)


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="train methods × seeds (skipping finished runs), then compare them",
                              description="Train every method with every seed from one recipe, each run in its own "
                                          "folder <out>/<method>_s<seed>; finished runs are skipped, interrupted "
                                          "ones resumed. Ends with `selfkd compare` of the grid in <out>/report.")
    p.add_argument("-c", "--config", help="YAML recipe shared by every run (see configs/)")
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. ce,lightskd,frskd")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--gpus", help="comma-separated GPU ids; one run per listed id at a time (list an id twice to share "
                                  "a GPU between two runs; default: one run at a time on the recipe's device)")
    p.add_argument("--out", help="sweep folder (default runs/sweep_<recipe name>)")
    p.add_argument("--model", help="backbone name for every run")
    p.add_argument("--dataset", help="dataset name for every run")
    p.add_argument("--data-dir", help="folder holding the dataset")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (ignored with --gpus)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every run, e.g. --set optim.lr=0.05 (repeatable)")
    p.set_defaults(func=cmd_sweep)
