"""CPU threads: how many each training process gets, and a note when a CPU run shares its cores with more work.

More compute threads than cores slow PyTorch on a CPU far more than the ratio of threads to cores. Measured on two
cores (benchmarks/README.md, "CPU threads"): four frskd runs of 2 threads each trained at 57 img/s together, one run
alone at 238. The cause is OpenMP's active waiting: a thread that finishes its share of a parallel region spins on
its core before it sleeps, taking that core from a thread that still works. With ``OMP_WAIT_POLICY=PASSIVE`` the same
four runs made 223 img/s together, and with one thread each 275. So ``selfkd sweep`` and ``selfkd demo`` split the
cores between the runs they start at once
(:func:`child_thread_env`, the one place a child's thread settings are decided), and a CPU run says once when the
machine was busier than its cores while it trained (:class:`LoadWatch`).
"""
from __future__ import annotations

import math
import os
import time

CHECK_AFTER_S = 60.0  # a CPU run checks the load at its first epoch end after this much training
SLACK = 0.5  # runnable threads above the core count, on average, that still pass as background noise


def cores() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this system
        return os.cpu_count() or 1


def child_thread_env(concurrent: int, environ=None, total: int | None = None) -> dict[str, str]:
    """The thread settings of each of ``concurrent`` training processes run at once: an equal share of the ``total``
    cores (default :func:`cores`), at least 1, and never more than an ``OMP_NUM_THREADS`` the caller set itself.
    PyTorch takes its number of compute threads from ``OMP_NUM_THREADS``."""
    environ = os.environ if environ is None else environ
    share = max(1, (total or cores()) // max(1, concurrent))
    given = str(environ.get("OMP_NUM_THREADS", "")).strip()
    if given.isdigit() and int(given) > 0:
        share = min(share, int(given))
    return {"OMP_NUM_THREADS": str(share), "MKL_NUM_THREADS": str(share)}


def runnable_since(load_before: float, load_now: float, seconds: float) -> float:
    """The mean number of runnable threads over the last ``seconds``, from the 1-minute load average at their start
    and now. The kernel averages exponentially with a 60 s time constant,
    ``L_now = L_before·e^(−t/60) + R·(1 − e^(−t/60))``, solved here for ``R``."""
    decay = math.exp(-seconds / 60.0)
    return (load_now - load_before * decay) / (1.0 - decay)


def oversubscription_note(runnable: float, threads: int, total: int) -> str | None:
    """The line a run prints when ``runnable`` threads (its own ``threads`` among them) shared ``total`` cores on
    average by more than :data:`SLACK`; None otherwise."""
    if runnable <= total + SLACK:
        return None
    others = max(0.0, runnable - threads)
    fewer = max(1, total - math.ceil(others))
    return (f"note: this machine is oversubscribed: about {runnable:.1f} threads were runnable on average while this "
            f"run trained ({threads} of them its own, about {others:.1f} from other work) for {total} cores, which "
            "slows CPU training down many times (OpenMP threads spin while they wait). Stop the other work or wait "
            f"for it, give this run fewer threads (OMP_NUM_THREADS={fewer}) or start it with OMP_WAIT_POLICY=PASSIVE, "
            "or run fewer runs at once.")


class LoadWatch:
    """Compares the machine's load with its cores once, at the first :meth:`note` at least :data:`CHECK_AFTER_S`
    after it was made (so that the 1-minute load average mostly covers this run). Off when ``enabled`` is false,
    without a load average, or when this process may use fewer CPUs than the machine has (the load average counts
    all of them)."""

    def __init__(self, enabled: bool = True):
        self.start = None
        if enabled and cores() == os.cpu_count():
            try:
                self.start = (time.monotonic(), os.getloadavg()[0])
            except (AttributeError, OSError):  # no load average on this system
                pass

    def note(self) -> str | None:
        if self.start is None or time.monotonic() - self.start[0] < CHECK_AFTER_S:
            return None
        import torch

        (began, load_before), self.start = self.start, None
        runnable = runnable_since(load_before, os.getloadavg()[0], time.monotonic() - began)
        return oversubscription_note(runnable, torch.get_num_threads(), cores())
