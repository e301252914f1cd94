"""Run-folder logs: metrics.jsonl and metrics.csv per epoch, TensorBoard events, console lines."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from ..errors import TrainingError
from ..runfolder import METRICS, METRICS_CSV, TENSORBOARD, read_metrics


class RunLogger:
    """Only the main process writes; the others hold a logger that does nothing."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.rows: list[dict] = []
        self.tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.rows = read_metrics(self.run_dir / METRICS)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.run_dir / TENSORBOARD))
                except ImportError:  # tensorboard is a dependency, but logging must never stop a run
                    self.tb = None

    def log_epoch(self, row: dict, step: int) -> None:
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        try:
            with open(self.run_dir / METRICS, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            self._write_csv()
        except OSError as err:
            raise TrainingError(f"Could not write the metrics in {self.run_dir} ({err.strerror or err}); the last "
                                "checkpoint is intact. Free some space, then resume the run.") from None
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def log_steps(self, values: dict, step: int) -> None:
        if self.enabled and self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with open(self.run_dir / METRICS_CSV, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def print(self, *args) -> None:
        if self.enabled:
            print(*args, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def use_progress_bar(setting) -> bool:
    return sys.stderr.isatty() if setting == "auto" else bool(setting)
