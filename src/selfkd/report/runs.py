"""Run folders as the report sees them: files written by the engine, read back without importing it.

A run folder holds ``config.yaml`` (written when the run starts), ``metrics.jsonl`` (one row per epoch),
``summary.json`` and ``reliability.json`` (once the run finished), and for segmentation ``examples.npz``. A folder
without ``summary.json`` is an unfinished run: it is listed as such, never dropped. A file the report cannot use is
named as a problem of its run; the report of the others is written.
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import read_yaml
from ..data.caches import npz_headers
from ..errors import ConfigError
from ..runfolder import CONFIG, EXAMPLES, METRICS, RELIABILITY, SUMMARY, read_metrics, summary_problems
from ..tasks import DEFAULT_TASK

# Keys that may differ between runs of one group without making them different experiments.
INCIDENTAL_KEYS = ("seed", "name", "run_dir", "data.data_dir", "train.device", "train.progress")


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict | None
    rows: list[dict] = field(default_factory=list)  # metrics.jsonl, one row per epoch, in epoch order
    reliability: dict | None = None
    problem: str = ""  # why a folder that looks finished is treated as unfinished
    examples: dict | None = None  # examples.npz (read_examples)
    examples_problem: str = ""  # why its examples.npz cannot be shown

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def _get(self, summary_key: str, *config_path: str):
        if self.summary and self.summary.get(summary_key) is not None:
            return self.summary[summary_key]
        node = self.config
        for part in config_path:
            node = node.get(part) if isinstance(node, dict) else None
        return node

    @property
    def dataset(self) -> str:
        return str(self._get("dataset", "data", "dataset") or "?")

    @property
    def model(self) -> str:
        return str(self._get("model", "model", "name") or "?")

    @property
    def method(self) -> str:
        return str(self._get("method", "method", "name") or "?")

    @property
    def task(self) -> str:
        task = self._get("task", "task")
        return DEFAULT_TASK if task in (None, "auto") else str(task)

    @property
    def seed(self):
        return self._get("seed", "seed")

    @property
    def epochs(self):
        return self._get("epochs", "train", "epochs")

    @property
    def key(self) -> tuple[str, str, str]:
        return self.dataset, self.model, self.method

    def final(self, metric: str) -> float:
        """Last-epoch test metric from ``summary.json`` ("final"), NaN when absent."""
        value = (self.summary or {}).get("final", {}).get(metric)
        return float(value) if isinstance(value, (int, float)) else math.nan

    def curve(self, key: str) -> dict[int, float]:
        """``{epoch: value}`` of one metrics.jsonl column (epochs without it are left out)."""
        return {int(r["epoch"]): float(r[key]) for r in self.rows
                if isinstance(r.get(key), (int, float)) and isinstance(r.get("epoch"), int)}


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() or (path / SUMMARY).is_file()


def runs_below(folder: Path):
    """Run folders inside ``folder`` at any depth (not descending into a run folder)."""
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if is_run_dir(sub):
            yield sub
        else:
            yield from runs_below(sub)


def find_run_dirs(paths) -> tuple[list[Path], list[Path]]:
    """Run folders named by ``paths`` (a folder holding run folders, e.g. a sweep, stands for all of
    them), and the paths that hold no run at all."""
    found, empty = [], []
    for given in map(Path, paths):
        if not given.exists():
            raise ConfigError(f"{given} does not exist. Pass run folders (each holds config.yaml), "
                              "or folders that hold run folders, e.g. `selfkd compare runs/*`.")
        inside = [given] if is_run_dir(given) else list(runs_below(given)) if given.is_dir() else []
        found.extend(inside)
        if not inside:
            empty.append(given)
    unique, seen = [], set()
    for path in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique, empty


def _read_json(path: Path):
    try:
        return json.loads(path.read_text()), ""
    except (OSError, json.JSONDecodeError) as err:
        return None, f"{path.name} is unreadable ({type(err).__name__})"


def load_run(path: Path) -> Run:
    path = Path(path)
    config: dict = {}
    if (path / CONFIG).is_file():
        try:
            config = read_yaml(path / CONFIG)
        except ConfigError:
            config = {}
    summary, problem = (None, "")
    if (path / SUMMARY).is_file():
        summary, problem = _read_json(path / SUMMARY)
        if summary is not None and not isinstance(summary, dict):
            summary, problem = None, "summary.json does not hold a mapping"
        wrong = summary_problems(summary) if summary is not None else []
        if wrong:
            summary, problem = None, f"summary.json holds values selfkd does not write ({', '.join(wrong)})"
    reliability = None
    if (path / RELIABILITY).is_file():
        reliability, _ = _read_json(path / RELIABILITY)
    return Run(path, config if isinstance(config, dict) else {}, summary, read_metrics(path / METRICS),
               reliability if isinstance(reliability, dict) else None, problem, *read_examples(path))


EXAMPLE_KEYS = ("images", "masks", "predictions", "sizes", "index", "classes")
MAX_EXAMPLES_BYTES = 2**28  # a run keeps four test images


def read_examples(run_dir: Path) -> tuple[dict | None, str]:
    """``(examples, "")``: a run's ``examples.npz`` (see :func:`selfkd.engine.examples.write_examples`);
    ``(None, "")`` when it has none; ``(None, why)`` when it cannot be shown: unreadable, larger than
    :data:`MAX_EXAMPLES_BYTES` (read from its headers, before anything is loaded) or not of that layout."""
    path = run_dir / EXAMPLES
    if not path.is_file():
        return None, ""
    try:
        size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in npz_headers(path).values())
        if size > MAX_EXAMPLES_BYTES:
            return None, f"{EXAMPLES} holds {size:,} bytes of arrays, more than four test images"
        with np.load(path, allow_pickle=False) as saved:
            ex = {key: saved[key] for key in EXAMPLE_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        return None, f"{EXAMPLES} is unreadable ({type(err).__name__})"
    return (ex, "") if _examples_valid(ex) else (None, f"{EXAMPLES} does not hold examples as selfkd writes them")


def _examples_valid(ex: dict) -> bool:
    """Whether ``ex`` holds N ≥ 1 uint8 examples of at least 1×1 pixels with their sizes, indices and class names."""
    images, masks, predictions, sizes = ex["images"], ex["masks"], ex["predictions"], ex["sizes"]
    n = len(ex["index"])
    shapes = (images.ndim == 4 and images.shape[:3] == masks.shape == predictions.shape and len(images) == n > 0
              and images.shape[1] > 0 and images.shape[2] > 0 and images.shape[3] in (1, 3))
    kinds = (all(a.dtype == np.uint8 for a in (images, masks, predictions)) and ex["classes"].dtype.kind == "U"
             and ex["index"].dtype.kind in "iu" and sizes.dtype.kind in "iu")
    return (shapes and kinds and sizes.shape == (n, 2) and bool((sizes >= 1).all())
            and bool((sizes <= images.shape[1:3]).all()))


def load_runs(paths) -> tuple[list[Run], list[Path]]:
    """(runs, paths holding no run). Raises :class:`ConfigError` when no run folder was found."""
    dirs, empty = find_run_dirs(paths)
    if not dirs:
        raise ConfigError(f"No run folder found in {', '.join(map(str, paths)) or '(nothing given)'}: a run "
                          "folder holds config.yaml (and summary.json once finished). Pass run folders or a sweep "
                          "folder.")
    return [load_run(d) for d in dirs], empty


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differing_settings(configs: list[dict], ignore=INCIDENTAL_KEYS) -> list[str]:
    """Dotted config keys whose values differ between ``configs`` (seeds, names, folders ignored)."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if k not in ignore and len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
