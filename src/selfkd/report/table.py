"""The results table: one row per (dataset, model, method), last-epoch test metrics over seeds.

Always the last epoch (``summary.json`` "final"), never the best test epoch. Mean ± sample standard
deviation (n − 1) over the group's finished runs; the gain is the difference of mean top-1 to ``ce``
trained on the same dataset and model.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field

from ..runfolder import CHECKPOINT
from .runs import Run, differing_settings

METRICS = ("top1", "top5", "nll", "ece", "aurc")
BASELINE = "ce"


@dataclass
class Group:
    dataset: str
    model: str
    method: str
    runs: list[Run]
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    train_time_s: float | None = None
    img_per_s: float | None = None
    extra_params: int | None = None
    gain: float | None = None  # mean top-1 minus ce's mean top-1 (same dataset and model)
    devices: list[str] = field(default_factory=list)
    mixed_settings: list[str] = field(default_factory=list)  # config keys that differ between its runs

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return sorted((r.seed for r in self.runs), key=str)


def _mean_std(values) -> tuple[float | None, float | None]:
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def method_order(method: str) -> tuple:
    return (method != BASELINE, method)


def summarize(runs: list[Run]) -> list[Group]:
    """Groups of finished runs, sorted by dataset, model, then ce first and the others by name."""
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.finished:
            by_key.setdefault(run.key, []).append(run)
    groups = []
    for (dataset, model, method), members in sorted(by_key.items(), key=lambda kv: (*kv[0][:2], method_order(kv[0][2]))):
        g = Group(dataset, model, method, sorted(members, key=lambda r: str(r.seed)))
        for metric in METRICS:
            g.mean[metric], g.std[metric] = _mean_std(r.final(metric) for r in members)
        g.train_time_s = _mean_std(r.summary.get("train_time_s") for r in members)[0]
        g.img_per_s = _mean_std(r.summary.get("img_per_s") for r in members)[0]
        extra = {r.summary.get("extra_params") for r in members} - {None}
        g.extra_params = max(extra) if extra else None
        g.devices = sorted({str(r.summary.get("device")) for r in members if r.summary.get("device")})
        g.mixed_settings = differing_settings([r.config for r in members if r.config])
        groups.append(g)
    baseline = {(g.dataset, g.model): g.mean["top1"] for g in groups if g.method == BASELINE}
    for g in groups:
        ref = baseline.get((g.dataset, g.model))
        g.gain = g.mean["top1"] - ref if ref is not None and g.mean["top1"] is not None else None
    return groups


# ----------------------------------------------------------------------------- formatting

COLUMNS = ("Dataset", "Model", "Method", "n", "Top-1 (%)", "Top-5 (%)", "NLL", "ECE (%)", "AURC (×10³)",
           "Train time", "img/s", "Extra params", "Δ top-1 vs ce", "Device")


def _num(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def format_count(n: int | None) -> str:
    if n is None:
        return ""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f} M"
    if n >= 1_000:
        return f"{n / 1e3:.1f} K"
    return str(n)


def cells(g: Group) -> list[str]:
    top1 = _num(g.mean["top1"], 2) + (f" ± {g.std['top1']:.2f}" if g.std["top1"] is not None else "")
    return [g.dataset, g.model, g.method, str(g.n), top1, _num(g.mean["top5"], 2), _num(g.mean["nll"], 3),
            _num(g.mean["ece"], 2), _num(g.mean["aurc"], 1), format_duration(g.train_time_s),
            _num(g.img_per_s, 0), format_count(g.extra_params), "" if g.gain is None else f"{g.gain:+.2f}",
            ", ".join(g.devices)]


def markdown_table(groups: list[Group]) -> str:
    """A Markdown table whose columns are padded, so it also reads well in a terminal."""
    rows = [list(COLUMNS)] + [cells(g) for g in groups]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _blank(value):
    return "" if value is None else value


def csv_text(groups: list[Group]) -> str:
    """Full-precision numbers: means and sample std of each metric, time in seconds, the run folders."""
    header = ["dataset", "model", "method", "n", "seeds"]
    for m in METRICS:
        header += [f"{m}_mean", f"{m}_std"]
    header += ["train_time_s", "img_per_s", "extra_params", "gain_top1_vs_ce", "device", "runs"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for g in groups:
        row = [g.dataset, g.model, g.method, g.n, " ".join(map(str, g.seeds))]
        for m in METRICS:
            row += [_blank(g.mean[m]), _blank(g.std[m])]
        row += [_blank(g.train_time_s), _blank(g.img_per_s), _blank(g.extra_params), _blank(g.gain),
                "; ".join(g.devices), "; ".join(str(r.path) for r in g.runs)]
        writer.writerow(row)
    return buf.getvalue()


def unfinished_lines(runs: list[Run]) -> list[str]:
    """One line per unfinished run: where it stopped and how to continue it."""
    lines = []
    for r in runs:
        if r.finished:
            continue
        done = len(r.rows)
        state = ("resumable: `selfkd train --resume " + str(r.path) + "`") if (r.path / CHECKPOINT).is_file() \
            else "no checkpoint yet"
        why = f"; {r.problem}" if r.problem else ""
        lines.append(f"{r.path}: {r.method} on {r.dataset}/{r.model}, seed {r.seed}, "
                     f"{done}/{r.epochs if r.epochs is not None else '?'} epochs logged, {state}{why}")
    return lines


def notes(groups: list[Group]) -> list[str]:
    """Warnings a reader of the table needs: mixed settings within a group, mixed devices."""
    out = []
    for g in groups:
        if g.mixed_settings:
            out.append(f"{g.dataset}/{g.model}/{g.method} mixes runs with different settings "
                       f"({', '.join(g.mixed_settings)}); its mean and std are over all of them.")
    devices = {d for g in groups for d in g.devices}
    if len(devices) > 1:
        out.append(f"Runs come from different devices ({', '.join(sorted(devices))}): "
                   "compare training times and img/s only within one device.")
    return out
