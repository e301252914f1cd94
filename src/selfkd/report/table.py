"""The results table: one row per (dataset, model, method), last-epoch test metrics over seeds.

Always the last epoch (``summary.json`` "final"), never the best test epoch. Mean ± sample standard
deviation (n − 1) over the group's finished runs; the gain is the difference of the mean of the task's
headline metric (top-1, mIoU) to ``ce`` trained on the same dataset and model, with its 95 % interval
(:mod:`selfkd.report.stats`: paired over seeds when both ran the same seeds, else Welch's). The metric columns are the
metrics' own (:mod:`selfkd.metrics`), those that some run reports. Segmentation runs also get a per-class
IoU table per dataset and model (:func:`class_tables`).
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field

from ..metrics import Column, columns
from ..runfolder import CHECKPOINT
from ..tasks import DEFAULT_TASK, TASKS
from .runs import Run, differing_settings
from .stats import Interval, gain_interval

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
    task: str = DEFAULT_TASK
    gain: float | None = None  # mean of the headline metric minus ce's (same dataset and model)
    interval: Interval | None = None  # 95 % interval of the gain (None for ce, or with one value on a side)
    devices: list[str] = field(default_factory=list)
    mixed_settings: list[str] = field(default_factory=list)  # config keys that differ between its runs

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list:
        return sorted((r.seed for r in self.runs), key=str)

    @property
    def primary(self) -> str:
        """The key of the task's headline metric (top1, miou)."""
        return TASKS[self.task].primary


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
    ordered = sorted(by_key.items(), key=lambda kv: (*kv[0][:2], method_order(kv[0][2])))
    for (dataset, model, method), members in ordered:
        g = Group(dataset, model, method, sorted(members, key=lambda r: str(r.seed)), task=members[0].task)
        for column in columns():
            g.mean[column.key], g.std[column.key] = _mean_std(r.final(column.key) for r in members)
        g.train_time_s = _mean_std(r.summary.get("train_time_s") for r in members)[0]
        g.img_per_s = _mean_std(r.summary.get("img_per_s") for r in members)[0]
        extra = {r.summary.get("extra_params") for r in members} - {None}
        g.extra_params = max(extra) if extra else None
        g.devices = sorted({str(r.summary.get("device")) for r in members if r.summary.get("device")})
        g.mixed_settings = differing_settings([r.config for r in members if r.config])
        groups.append(g)
    baseline = {(g.dataset, g.model): g for g in groups if g.method == BASELINE}
    for g in groups:
        ref, mine = baseline.get((g.dataset, g.model)), g.mean[g.primary]
        g.gain = mine - ref.mean[g.primary] if ref is not None and None not in (mine, ref.mean[g.primary]) else None
        if g.gain is not None and g is not ref:
            g.interval = gain_interval(_seed_values(g), _seed_values(ref))
    return groups


def _seed_values(g: Group) -> list[tuple]:
    """``(seed, headline metric)`` of the group's runs that report it."""
    return [(r.seed, r.final(g.primary)) for r in g.runs if math.isfinite(r.final(g.primary))]


def gain_text(g: Group) -> str:
    """``+0.42 [-0.31, +1.15] within noise``, ``+0.42 (no interval)`` with one value on a side, ``+0.00`` for ce."""
    if g.gain is None:
        return ""
    if g.interval is not None:
        return g.interval.text() + (" within noise" if g.interval.within_noise else "")
    return f"{g.gain:+.2f}" + ("" if g.method == BASELINE else " (no interval)")


def metric_columns(groups: list[Group]) -> list[Column]:
    """The metric columns some group has a value for: those of each task of the groups in its metrics' order
    (the headline metric first)."""
    cols: list[Column] = []
    for task in dict.fromkeys(g.task for g in groups):
        cols += [c for c in columns(task) if c not in cols]
    return [c for c in cols if any(g.mean.get(c.key) is not None for g in groups)]


# ----------------------------------------------------------------------------- formatting

def headers(cols: list[Column]) -> list[str]:
    return ["Dataset", "Model", "Method", "n", *(c.header for c in cols), "Train time", "img/s", "Extra params",
            "Δ vs ce [95 % interval]", "Device"]


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


def cells(g: Group, cols: list[Column]) -> list[str]:
    """The group's row; its headline metric shows mean ± sample std over seeds, the others means."""
    values = []
    for c in cols:
        text = _num(g.mean.get(c.key), c.digits)
        if c.key == g.primary and g.std.get(c.key) is not None:
            text += f" ± {g.std[c.key]:.{c.digits}f}"
        values.append(text)
    return [g.dataset, g.model, g.method, str(g.n), *values, format_duration(g.train_time_s), _num(g.img_per_s, 0),
            format_count(g.extra_params), gain_text(g), ", ".join(g.devices)]


def markdown_table(groups: list[Group]) -> str:
    """The results table in Markdown."""
    cols = metric_columns(groups)
    return markdown_rows([headers(cols)] + [cells(g, cols) for g in groups])


def markdown_rows(rows: list[list[str]]) -> str:
    """A Markdown table (header row first) whose columns are padded, so it also reads well in a terminal."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def class_names(runs: list[Run]) -> list[str]:
    """The class names of segmentation runs (summary.json "classes"), as many as their per-class IoU lists;
    ``class k`` where a run does not name them."""
    count = max(len(_class_iou(r)) for r in runs)
    for r in runs:
        names = r.summary.get("classes")
        if isinstance(names, list) and len(names) == count:
            return [str(c) for c in names]
    return [f"class {k}" for k in range(count)]


def _class_iou(run: Run) -> list:
    values = (run.summary or {}).get("final", {}).get("iou_per_class")
    return values if isinstance(values, list) else []


def class_iou(group: Group, count: int) -> list[float | None]:
    """The mean IoU (%) of each of ``count`` classes over the group's runs (last epoch); a run where a class was
    absent from both truth and prediction (IoU None) is left out of that class's mean; None where no run has it."""
    per_run = [_class_iou(r) for r in group.runs]
    return [_mean_std(v[k] for v in per_run if k < len(v) and v[k] is not None)[0] for k in range(count)]


def class_tables(groups: list[Group]) -> list[tuple[str, list[list[str]]]]:
    """Per (dataset, model) with segmentation runs: a title and the per-class IoU table (header row first), one row
    per class and one column per method, each the mean over its seeds."""
    panels: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        if any(_class_iou(r) for r in g.runs):
            panels.setdefault((g.dataset, g.model), []).append(g)
    tables = []
    for (dataset, model), members in panels.items():
        names = class_names([r for g in members for r in g.runs if _class_iou(r)])
        means = [class_iou(g, len(names)) for g in members]
        rows = [["Class", *(f"{g.method} (n={g.n})" for g in members)]]
        rows += [[name, *(_num(m[k], 2) for m in means)] for k, name in enumerate(names)]
        tables.append((f"{dataset} / {model}: IoU per class (%), last epoch, mean over seeds", rows))
    return tables


def _blank(value):
    return "" if value is None else value


def csv_text(groups: list[Group]) -> str:
    """Full-precision numbers: means and sample std of each metric, time in seconds, the run folders."""
    keys = [c.key for c in metric_columns(groups)]
    header = ["dataset", "model", "method", "n", "seeds"]
    for m in keys:
        header += [f"{m}_mean", f"{m}_std"]
    header += ["train_time_s", "img_per_s", "extra_params", "gain_vs_ce", "gain_low", "gain_high", "gain_interval",
               "device", "runs"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for g in groups:
        row = [g.dataset, g.model, g.method, g.n, " ".join(map(str, g.seeds))]
        for m in keys:
            row += [_blank(g.mean[m]), _blank(g.std[m])]
        ci = g.interval
        row += [_blank(g.train_time_s), _blank(g.img_per_s), _blank(g.extra_params), _blank(g.gain),
                *((ci.low, ci.high, ci.kind) if ci else ("", "", "")), "; ".join(g.devices),
                "; ".join(str(r.path) for r in g.runs)]
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
    """Warnings a reader of the table needs: gains without an interval, mixed settings within a group, mixed
    devices."""
    out = []
    lone = [f"{g.dataset}/{g.model}/{g.method}" for g in groups if g.gain is not None and g.method != BASELINE
            and g.interval is None]
    if lone:
        out.append(f"The gain of {', '.join(lone)} over ce has no interval: it rests on one run of it or of ce, so "
                   "it cannot be told from seed-to-seed noise. Train at least two seeds of both (e.g. "
                   "`selfkd demo --seeds 0,1,2`, or `selfkd sweep --seeds 0,1,2`) to get a 95 % interval.")
    for g in groups:
        if g.mixed_settings:
            out.append(f"{g.dataset}/{g.model}/{g.method} mixes runs with different settings "
                       f"({', '.join(g.mixed_settings)}); its mean and std are over all of them.")
        missing = [r.path.name for r in g.runs if not math.isfinite(r.final(g.primary))]
        if missing:
            out.append(f"{g.dataset}/{g.model}/{g.method}: {len(missing)} of its {g.n} finished runs have no finite "
                       f"final {g.primary} ({', '.join(missing)}); its mean, std and interval leave them out.")
    devices = {d for g in groups for d in g.devices}
    if len(devices) > 1:
        out.append(f"Runs come from different devices ({', '.join(sorted(devices))}): "
                   "compare training times and img/s only within one device.")
    return out
