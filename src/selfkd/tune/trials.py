"""One trial: a ``selfkd train`` child process in its own run folder ``<out>/<method>/trial_<n>/``, watched while it
trains.

The trainer knows nothing of Optuna: the child writes ``metrics.jsonl`` after every evaluated epoch, and the worker
reads it, reports each epoch's validation metric to the trial and, when the pruner says so, sends the child SIGTERM;
the child checkpoints and stops as on any SIGTERM, so a pruned trial's run folder stays a valid, resumable run. A
retried trial (its worker died, or was interrupted) continues the run folder of the trial it retries from its last
checkpoint. On Linux the child gets SIGTERM too when the worker that started it dies, even by SIGKILL, so no
training outlives its worker.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Interrupted, SelfKDError
from ..runfolder import CHECKPOINT, CONFIG, METRICS, SUMMARY, read_metrics
from ..sweep import start_child
from .space import suggest
from .study import frozen, slot, within_budget

POLL_S = 0.2  # how often a running trial's metrics are read
MAX_FAILURES = 3  # failed trials in a row after which a worker stops (the recipe or the space is likely at fault)


class TrialFailed(SelfKDError):
    """A trial's run failed (its log says why); the study goes on without it."""


class OverBudget(SelfKDError):
    """The trial was asked for after other workers filled the budget; it is failed at once, never run."""


@dataclass
class Lane:
    """Where a worker runs one trial at a time: a GPU (None: the recipe's device) and the child's thread settings."""

    slot: str | None
    threads: dict


@dataclass
class Trials:
    """The objective of one method's study: each call runs one trial to its end and returns its value (the
    validation metric of the weights its run selects)."""

    out: Path
    method: str
    space: dict
    base: Path  # the trials' recipe (the study's config)
    budget: int
    metric: str  # val/<the task's headline metric>
    stop: threading.Event
    procs: list  # the running children, which Ctrl-C and SIGTERM reach (sweep.forward_signals)
    on_gpus: bool = False
    failures: list = field(default_factory=list)  # consecutive failed trials (numbers)
    interrupted: list = field(default_factory=list)  # numbers of trials stopped by Ctrl-C / SIGTERM

    def __call__(self, trial, lane: Lane) -> float:
        record = frozen(trial)
        if not within_budget(trial.study, record, self.budget):
            trial.set_user_attr("error", "asked for after other workers filled the budget; not run")
            raise OverBudget(f"trial {trial.number} was asked for after the budget of {self.budget} filled")
        params = {key: suggest(trial, key, where) for key, where in self.space.items()}
        number = slot(record)
        run_dir = self.out / self.method / f"trial_{number:03d}"
        name = f"{self.method} trial {number}"
        log = self.out / "logs" / f"{self.method}_trial_{number:03d}.log"
        trial.set_user_attr("run_dir", str(run_dir))
        if self.stop.is_set():
            self.interrupted.append(trial.number)
            raise Interrupted(f"{name} was asked for as the worker stopped")
        print(f"[{name}] {'resume' if (run_dir / CHECKPOINT).is_file() else 'start'}: "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
              + f"; log {log}", flush=True)
        proc, pump = start_child(["train", *self._args(run_dir, params, name)], name, log, lane.slot, lane.threads,
                                 preexec_fn=_die_with_parent(os.getpid()))
        self.procs.append(proc)
        pruned_at = self._watch(trial, proc, run_dir)
        pump.join()
        self.procs.remove(proc)
        return self._outcome(trial, proc.returncode, run_dir, pruned_at, name, log)

    def _args(self, run_dir: Path, params: dict, name: str) -> list[str]:
        """``selfkd train`` arguments: continue the run folder from its checkpoint, or start it with the params."""
        device = ["--device", "cuda"] if self.on_gpus else []
        if (run_dir / CHECKPOINT).is_file():
            return ["--resume", str(run_dir), *device]
        args = ["-c", str(self.base), "--run-dir", str(run_dir), "--name", name.replace(" ", "_"), *device]
        args += [a for key, value in params.items() for a in ("--set", f"{key}={json.dumps(value)}")]
        return args + (["--overwrite"] if (run_dir / CONFIG).is_file() else [])  # stopped before its first checkpoint

    def _watch(self, trial, proc, run_dir: Path) -> int | None:
        """Report each new epoch's validation metric while the child runs, and stop it (SIGTERM) at the first epoch
        the pruner prunes, reporting nothing after it; returns that epoch (None: not pruned)."""
        reported, pruned_at = set(), None
        while True:
            running = proc.poll() is None
            for row in read_metrics(run_dir / METRICS):
                value = row.get(self.metric)
                if pruned_at is not None or row["epoch"] in reported or not isinstance(value, (int, float)):
                    continue
                trial.report(float(value), row["epoch"])
                reported.add(row["epoch"])
                if running and not self.stop.is_set() and trial.should_prune():
                    pruned_at = row["epoch"]
                    proc.send_signal(signal.SIGTERM)
            if not running:
                return pruned_at
            time.sleep(POLL_S)

    def _outcome(self, trial, code: int, run_dir: Path, pruned_at: int | None, name: str, log: Path) -> float:
        """The trial's value when its run finished (even if it did before a pruning stop reached it); else it was
        pruned, interrupted or failed."""
        import optuna

        if code == 0:
            selected = json.loads((run_dir / SUMMARY).read_text()).get("selected") or {}
            trial.set_user_attr("selected_epoch", selected.get("epoch"))
            self.failures.clear()
            print(f"[{name}] complete: {self.metric} {selected['value']:.2f} (epoch {selected.get('epoch')})",
                  flush=True)
            return float(selected["value"])
        if pruned_at is not None:
            trial.set_user_attr("pruned_at", pruned_at)
            print(f"[{name}] pruned at epoch {pruned_at}", flush=True)
            raise optuna.TrialPruned(f"pruned at epoch {pruned_at}")
        if self.stop.is_set():
            self.interrupted.append(trial.number)
            raise Interrupted(f"{name} was stopped with its run (exit code {code}); it will continue from its "
                              "checkpoint")
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        trial.set_user_attr("error", (tail or [f"exit code {code}"])[0][-300:])
        self.failures.append(trial.number)
        print(f"[{name}] FAILED (exit code {code}); log {log}", flush=True)
        raise TrialFailed(f"{name} failed (exit code {code}); its log: {log}")


def _die_with_parent(parent: int):
    """What the child runs before ``selfkd``: on Linux, ask for SIGTERM when the worker ``parent`` dies (prctl's
    PR_SET_PDEATHSIG), and stop at once if it already died; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, in the worker, not in the forked child

    def ask() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return ask
