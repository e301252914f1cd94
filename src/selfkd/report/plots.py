"""PNG plots of a comparison, one set per (dataset, model): test accuracy and training loss per epoch,
reliability diagrams, accuracy against training cost.

Figures are drawn with matplotlib's object API on the Agg canvas, never through pyplot, so making a
report changes no global matplotlib state (backend, open figures) of the program that calls it.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from .table import Group


def _figure(width: float, height: float, cols: int = 1, rows: int = 1):
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts)).strip("-")


def mean_curve(group: Group, key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Epochs, mean, min and max over the group's runs of one metrics column."""
    curves = [r.curve(key) for r in group.runs]
    epochs = sorted(set().union(*curves))
    mean, lo, hi = [], [], []
    for e in epochs:
        values = [c[e] for c in curves if e in c]
        mean.append(sum(values) / len(values))
        lo.append(min(values))
        hi.append(max(values))
    return epochs, mean, lo, hi


def plot_curves(groups: list[Group], key: str, ylabel: str, title: str, path: Path, log_y: bool = False) -> bool:
    fig, (ax,) = _figure(6.4, 4.2)
    drawn = False
    for i, g in enumerate(groups):
        epochs, mean, lo, hi = mean_curve(g, key)
        if not epochs:
            continue
        drawn = True
        ax.plot(epochs, mean, color=f"C{i}", marker="o" if len(epochs) < 30 else None, ms=3,
                label=f"{g.method} (n={g.n})")
        if g.n > 1:
            ax.fill_between(epochs, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
    if not drawn:
        return False
    if log_y and all(v > 0 for g in groups for v in mean_curve(g, key)[1]):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title + ("  (mean over seeds, band: min–max)" if any(g.n > 1 for g in groups) else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return True


def pooled_reliability(group: Group) -> tuple[list[float], list[float], list[float]] | None:
    """Per-bin count, mean confidence and accuracy over all runs of a group (bins pooled by count)."""
    tables = [r.reliability for r in group.runs if r.reliability and r.reliability.get("count")]
    if not tables:
        return None
    bins = len(tables[0]["count"])
    tables = [t for t in tables if len(t["count"]) == bins]
    count = [sum(t["count"][b] for t in tables) for b in range(bins)]
    conf = [sum(t["count"][b] * t["confidence"][b] for t in tables) / count[b] if count[b] else 0.0 for b in range(bins)]
    acc = [sum(t["count"][b] * t["accuracy"][b] for t in tables) / count[b] if count[b] else 0.0 for b in range(bins)]
    return count, conf, acc


def plot_reliability(groups: list[Group], title: str, path: Path) -> bool:
    pooled = [(g, pooled_reliability(g)) for g in groups]
    pooled = [(g, p) for g, p in pooled if p is not None]
    if not pooled:
        return False
    cols = min(4, len(pooled))
    rows = math.ceil(len(pooled) / cols)
    fig, axes = _figure(max(3.2 * cols, 4.0), 3.4 * rows, cols, rows)
    for ax, (g, (count, conf, acc)) in zip(axes, pooled):
        width = 1.0 / len(count)
        centres = [(b + 0.5) * width for b in range(len(count))]
        used = [b for b in range(len(count)) if count[b] > 0]
        ax.bar([centres[b] for b in used], [acc[b] for b in used], width=width, color="C0", edgecolor="white",
               label="accuracy")
        ax.bar([centres[b] for b in used], [abs(conf[b] - acc[b]) for b in used],
               bottom=[min(conf[b], acc[b]) for b in used], width=width, color="none", edgecolor="C3", hatch="//",
               linewidth=0.5, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ece = g.mean.get("ece")
        ax.set_title(f"{g.method}" + (f"  ECE {ece:.2f}%" if ece is not None else ""), fontsize=10)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(pooled):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}\nreliability, last epoch, seeds pooled", fontsize=10)
    fig.savefig(path)
    return True


def plot_cost(groups: list[Group], title: str, path: Path) -> bool:
    costs = [("train_time_s", "training time (min)", 1 / 60), ("img_per_s", "training throughput (img/s)", 1.0)]
    points = [g for g in groups if g.mean["top1"] is not None]
    if not any(getattr(g, attr) is not None for g in points for attr, _, _ in costs):
        return False
    fig, axes = _figure(9.6, 4.0, cols=2)
    for ax, (attr, label, scale) in zip(axes, costs):
        for i, g in enumerate(points):
            x = getattr(g, attr)
            if x is None:
                continue
            ax.errorbar([x * scale], [g.mean["top1"]], yerr=[g.std["top1"] or 0.0], fmt="o", color=f"C{i}",
                        capsize=3, label=g.method)
            ax.annotate(g.method, (x * scale, g.mean["top1"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("test top-1 (%), last epoch")
        ax.grid(alpha=0.3)
    devices = sorted({d for g in points for d in g.devices})
    fig.suptitle(f"{title} — accuracy vs training cost" + (f" ({', '.join(devices)})" if devices else ""), fontsize=10)
    fig.savefig(path)
    return True


def make_plots(groups: list[Group], out: Path) -> list[tuple[str, str]]:
    """Write every plot under ``out``; returns ``(caption, file name)`` pairs in display order."""
    panels: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        panels.setdefault((g.dataset, g.model), []).append(g)
    made = []
    for (dataset, model), members in panels.items():
        title = f"{dataset} / {model}"
        name = slug(dataset, model)
        plots = [
            (f"{title}: test top-1 per epoch", f"accuracy_{name}.png",
             lambda p: plot_curves(members, "test/top1", "test top-1 (%)", f"{title}: test accuracy", p)),
            (f"{title}: training loss per epoch", f"loss_{name}.png",
             lambda p: plot_curves(members, "train/loss", "training loss (all terms)", f"{title}: training loss",
                                   p, log_y=True)),
            (f"{title}: reliability diagrams", f"reliability_{name}.png",
             lambda p: plot_reliability(members, title, p)),
            (f"{title}: accuracy vs training cost", f"cost_{name}.png", lambda p: plot_cost(members, title, p)),
        ]
        for caption, filename, draw in plots:
            if draw(out / filename):
                made.append((caption, filename))
    return made
