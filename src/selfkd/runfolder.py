"""The run folder's layout, shared by the engine that writes it and the commands that read it
(eval, compare, sweep, export): file names and the reader of the per-epoch metrics."""
from __future__ import annotations

import json
from pathlib import Path

CONFIG = "config.yaml"  # the resolved config, written when the run starts
METRICS = "metrics.jsonl"  # one row per epoch
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tb"
CHECKPOINT = "last.pt"  # everything needed to resume
WEIGHTS = "model.safetensors"  # the deployable backbone
RELIABILITY = "reliability.json"  # per-bin statistics of the last evaluation
SUMMARY = "summary.json"  # written when the run finishes


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows in epoch order; an epoch logged twice (after a resume) keeps its last row, and a
    line cut by a crash is skipped."""
    rows: dict = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]
