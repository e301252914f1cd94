"""PNG plots of a comparison, one set per (dataset, model): the headline metric (top-1, mIoU) and training loss per
epoch, reliability diagrams, accuracy against training cost, and for segmentation a figure of test images with
their ground truth and each method's predictions (from the runs' ``examples.npz``).

Figures are drawn with matplotlib's object API on the Agg canvas, never through pyplot, so making a
report changes no global matplotlib state (backend, open figures) of the program that calls it.
"""
from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from ..atomic import atomic_write
from ..metrics import Column, column
from ..tasks import IGNORE_LABEL, TASKS
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


def plot_curves(groups: list[Group], key: str, ylabel: str, title: str, log_y: bool = False) -> Figure | None:
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
        return None
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
    return fig


def pooled_reliability(group: Group) -> tuple[list[float], list[float], list[float]] | None:
    """Per-bin count, mean confidence and accuracy over all runs of a group (bins pooled by count)."""
    tables = [r.reliability for r in group.runs if r.reliability and r.reliability.get("count")]
    if not tables:
        return None
    bins = len(tables[0]["count"])
    tables = [t for t in tables if len(t["count"]) == bins]
    count = [sum(t["count"][b] for t in tables) for b in range(bins)]
    def weighted(key: str) -> list[float]:
        return [sum(t["count"][b] * t[key][b] for t in tables) / count[b] if count[b] else 0.0 for b in range(bins)]

    conf, acc = weighted("confidence"), weighted("accuracy")
    return count, conf, acc


def plot_reliability(groups: list[Group], title: str) -> Figure | None:
    pooled = [(g, pooled_reliability(g)) for g in groups]
    pooled = [(g, p) for g, p in pooled if p is not None]
    if not pooled:
        return None
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
    return fig


def plot_cost(groups: list[Group], title: str, metric: Column) -> Figure | None:
    costs = [("train_time_s", "training time (min)", 1 / 60), ("img_per_s", "training throughput (img/s)", 1.0)]
    key = metric.key
    points = [g for g in groups if g.mean.get(key) is not None]
    if not any(getattr(g, attr) is not None for g in points for attr, _, _ in costs):
        return None
    fig, axes = _figure(9.6, 4.0, cols=2)
    for ax, (attr, label, scale) in zip(axes, costs):
        for i, g in enumerate(points):
            x = getattr(g, attr)
            if x is None:
                continue
            ax.errorbar([x * scale], [g.mean[key]], yerr=[g.std[key] or 0.0], fmt="o", color=f"C{i}",
                        capsize=3, label=g.method)
            ax.annotate(g.method, (x * scale, g.mean[key]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"test {metric.header}, last epoch")
        ax.grid(alpha=0.3)
    devices = sorted({d for g in points for d in g.devices})
    fig.suptitle(f"{title} — accuracy vs training cost" + (f" ({', '.join(devices)})" if devices else ""), fontsize=10)
    return fig


def voc_palette() -> np.ndarray:
    """``(256, 3)`` uint8: the PASCAL VOC colour map, label ``l``'s bits interleaved into R, G, B from the high bit
    down (bit ``3j + c`` of ``l`` is bit ``7 − j`` of channel ``c``). Label 0 is black; 255, the ignored label, is
    VOC's boundary colour (224, 224, 192), which no other label shares."""
    labels = np.arange(256)
    palette = np.zeros((256, 3), np.int64)
    for j in range(8):
        for c in range(3):
            palette[:, c] |= ((labels >> (3 * j + c)) & 1) << (7 - j)
    return palette.astype(np.uint8)


def example_sources(groups: list[Group]) -> list[tuple[Group, dict[str, np.ndarray]]]:
    """One run's examples per group that has any, all of one seed where possible: the seed that most groups have
    examples of (the first in seed order among ties)."""
    found = [(g, {r.seed: r.examples for r in g.runs if r.examples is not None}) for g in groups]
    seeds = sorted({s for _, by_seed in found for s in by_seed}, key=str)
    if not seeds:
        return []
    seed = max(seeds, key=lambda s: sum(s in by_seed for _, by_seed in found))  # max keeps the first among ties
    return [(g, by_seed.get(seed, next(iter(by_seed.values())))) for g, by_seed in found if by_seed]


def plot_examples(groups: list[Group], title: str) -> Figure | None:
    """Rows of test images: the image, its ground truth and each method's prediction, coloured with
    :func:`voc_palette`, and a legend of the class names shown. The images are those of the first method's
    examples; another method's prediction of one is drawn when its examples hold the same test image (same
    index and ground truth), else its cell is left empty."""
    sources = example_sources(groups)
    if not sources:
        return None
    ref = sources[0][1]
    palette = voc_palette()
    rows, cols = len(ref["index"]), 2 + len(sources)
    fig, axes = _figure(1.9 * cols, 1.9 * rows + 0.9, cols, rows)
    shown: set[int] = set()

    def draw_labels(ax, labels: np.ndarray) -> None:
        shown.update(np.unique(labels).tolist())
        ax.imshow(palette[labels], interpolation="nearest")

    for i, index in enumerate(ref["index"]):
        row = axes[i * cols:(i + 1) * cols]
        image = _crop(ref, i, "images")
        if image.shape[-1] == 3:
            row[0].imshow(image, interpolation="nearest")
        else:
            row[0].imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        truth = _crop(ref, i, "masks")
        draw_labels(row[1], truth)
        for ax, (_, examples) in zip(row[2:], sources):
            at = np.flatnonzero(examples["index"] == index)
            if len(at) and np.array_equal(_crop(examples, at[0], "masks"), truth):
                draw_labels(ax, _crop(examples, at[0], "predictions"))
    for ax, heading in zip(axes, ["test image", "ground truth", *(g.method for g, _ in sources)]):
        ax.set_title(heading, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.legend(handles=_legend(palette, [str(c) for c in ref["classes"]], shown), loc="outside lower center",
               ncol=min(len(shown), 6), fontsize=8)
    fig.suptitle(f"{title}\ntest images, ground truth and predictions (last epoch)", fontsize=10)
    return fig


def _crop(examples: dict, i: int, key: str) -> np.ndarray:
    """Example ``i`` of ``examples[key]`` without its padding."""
    h, w = examples["sizes"][i]
    return examples[key][i, :h, :w]


def _legend(palette: np.ndarray, names: list[str], shown: set[int]) -> list[Patch]:
    def label(k: int) -> str:
        return f"ignored ({IGNORE_LABEL})" if k == IGNORE_LABEL else names[k] if k < len(names) else f"class {k}"

    return [Patch(facecolor=palette[k] / 255, edgecolor="0.5", label=label(k)) for k in sorted(shown)]


def _panel_plots(members: list[Group], title: str) -> list[tuple[str, str, object]]:
    """The plots of one dataset and model (its groups ``members``): ``(caption, file stem, draw)``, where ``draw()``
    returns the figure, or None when there is nothing to draw."""
    metric = column(members[0].primary)  # the headline metric: top-1, mIoU
    header = f"test {metric.header}"
    plots = [
        (f"{title}: {header} per epoch", "accuracy",
         partial(plot_curves, members, f"test/{metric.key}", header, f"{title}: {header}")),
        (f"{title}: training loss per epoch", "loss", partial(
            plot_curves, members, "train/loss", "training loss (all terms)", f"{title}: training loss", log_y=True)),
        (f"{title}: reliability diagrams", "reliability", partial(plot_reliability, members, title)),
        (f"{title}: accuracy vs training cost", "cost", partial(plot_cost, members, title, metric=metric)),
    ]
    if "examples" in TASKS[members[0].task].report_sections:
        plots.append((f"{title}: test images, ground truth and each method's prediction", "examples",
                      partial(plot_examples, members, title)))
    return plots


def make_plots(groups: list[Group], out: Path, then: str) -> list[tuple[str, str]]:
    """Write every plot under ``out`` (each PNG atomically; ``then``: what to do when one cannot be written); returns
    ``(caption, file name)`` pairs in display order."""
    panels: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        panels.setdefault((g.dataset, g.model), []).append(g)
    made = []
    for (dataset, model), members in panels.items():
        for caption, stem, draw in _panel_plots(members, f"{dataset} / {model}"):
            if (fig := draw()) is not None:
                name = f"{stem}_{slug(dataset, model)}.png"
                atomic_write(out / name, lambda tmp, f=fig: f.savefig(tmp, format="png"), then)
                made.append((caption, name))
    return made
