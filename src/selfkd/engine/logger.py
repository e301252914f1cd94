"""Run-folder logs: metrics.jsonl and metrics.csv per epoch, TensorBoard events, console lines."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import threading
from pathlib import Path

from ..atomic import atomic_write, write_failure
from ..metrics import column, columns
from ..runfolder import METRICS, METRICS_CSV, TENSORBOARD, next_step, read_metrics
from ..tasks import TASKS


class RunLogger:
    """Only the main process writes; the others hold a logger that does nothing. Nothing is written before the
    first row (the TensorBoard writer, which makes a file when it starts, starts then). A resumed run continues the
    rows of its metrics.jsonl."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, resume: bool = False):
        self.run_dir, self.enabled, self.tensorboard = Path(run_dir), enabled, tensorboard
        self.rows: list[dict] = read_metrics(self.run_dir / METRICS) if enabled and resume else []
        self.tb = self.hook = None

    def _tensorboard(self, write) -> None:
        """``write(writer)`` with the TensorBoard writer, started on first use. TensorBoard is a convenience: if it
        cannot write (a full disk), it stops with a note and the run goes on (its checkpoint will say if the disk is
        full); its writer thread's own report of the error is silenced."""
        if not (self.enabled and self.tensorboard):
            return
        try:
            if self.tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self.hook = threading.excepthook
                threading.excepthook = lambda args: None if _tensorboard_thread(args) else self.hook(args)
                self.tb = SummaryWriter(str(self.run_dir / TENSORBOARD))
            write(self.tb)
        except ImportError:  # tensorboard is a dependency, but logging must never stop a run
            self.tensorboard = False
        except Exception as err:  # noqa: BLE001 (any writer error: its thread re-raises what it met)
            self.tensorboard = False
            print(f"note: TensorBoard logging stopped ({write_failure(err, self.run_dir)}); metrics.jsonl keeps "
                  "every epoch.", file=sys.stderr, flush=True)

    def log_epoch(self, row: dict, step: int) -> None:
        """Add (or, after a resume, replace) the epoch's row; both metrics files are rewritten atomically."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        lines = "".join(json.dumps(r) + "\n" for r in self.rows)
        atomic_write(self.run_dir / METRICS, lambda tmp: tmp.write_text(lines), next_step(self.run_dir))
        atomic_write(self.run_dir / METRICS_CSV, lambda tmp: tmp.write_text(self._csv()), next_step(self.run_dir))
        self.log_steps({key: value for key, value in row.items() if key != "epoch"}, step, flush=True)

    def log_steps(self, values: dict, step: int, flush: bool = False) -> None:
        def write(tb):
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    tb.add_scalar(key, value, step)
            if flush:
                tb.flush()

        self._tensorboard(write)

    def _csv(self) -> str:
        """The rows' numbers (lists, such as the per-class IoU, stay in metrics.jsonl)."""
        rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in self.rows]
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue()

    def print(self, *args) -> None:
        if self.enabled:
            print(*args, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            with contextlib.suppress(Exception):  # already reported, if it failed
                self.tb.close()
        if self.hook is not None:
            threading.excepthook = self.hook
        self.tb = self.hook = None


def _tensorboard_thread(args) -> bool:
    """Whether an uncaught thread error is TensorBoard's writer thread re-raising a write error (reported by the
    logger itself)."""
    return type(args.thread).__name__ == "_AsyncWriterThread"


def progress_bar(setting, main: bool, total: int, initial: int, desc: str):
    """A tqdm bar over an epoch's steps on the main process when ``train.progress`` asks for one (``auto``: when
    stderr is a terminal), else None."""
    if not main or not (sys.stderr.isatty() if setting == "auto" else bool(setting)):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def epoch_line(row: dict, epochs: int, task: str) -> str:
    """``epoch 3/10  loss 0.4212  train 91.20%  val 87.50%  test 88.10%  nll 0.351  ece 2.10%  5123 img/s``: the
    headline validation metric (with a validation split), then the task's test metrics that have a console label
    (:class:`selfkd.metrics.Column`), in their order."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row.get('train/loss', math.nan):.4f}",
             f"train {row.get('train/' + TASKS[task].train_accuracy, math.nan):.2f}%"]
    val = row.get(f"val/{TASKS[task].primary}")
    if isinstance(val, (int, float)):
        parts.append(f"val {column(TASKS[task].primary).format(val)}")
    for shown in columns(task):
        value = row.get(f"test/{shown.key}")
        if shown.line and isinstance(value, (int, float)):
            parts.append(f"{shown.line} {shown.format(value)}")
    parts.append(f"{row.get('time/img_per_s', 0):.0f} img/s")
    return "  ".join(parts)
