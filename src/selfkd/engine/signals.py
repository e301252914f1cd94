"""Ctrl-C and SIGTERM during training: finish the step, checkpoint, stop; a second Ctrl-C aborts at once."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set ``flag["stop"]`` (the signal's name); the loop finishes its step, checkpoints and stops. A
    second Ctrl-C aborts at once (KeyboardInterrupt: a file being written is abandoned, its previous version intact)
    while ``flag["abortable"]``; once the stop's checkpoint is saved there is nothing left to abort."""
    flag = {"stop": None, "abortable": True}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"] is not None and signum == signal.SIGINT and flag["abortable"]:
            raise KeyboardInterrupt
        flag["stop"] = flag["stop"] or signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)
