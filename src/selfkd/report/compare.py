"""``selfkd compare RUN_DIR... [--out DIR]``: a table, plots and an HTML page from finished run folders."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..runfolder import report_folder
from .page import html_page
from .plots import make_plots
from .runs import load_runs
from .table import Group, class_tables, csv_text, markdown_rows, markdown_table, notes, summarize, unfinished_lines

HOW_TO_READ = ("Test metrics of each run's selected weights (summary.json 'final': the last epoch's, or with "
               "train.select: best_val those of the epoch with the best validation metric), never the best test "
               "epoch. The headline metric "
               "(top-1 for classification, mIoU for segmentation): mean ± sample standard deviation over seeds (n "
               "runs); "
               "other metrics: means. Δ vs ce: difference of the headline metric's mean to `ce` on the same dataset "
               "and model, with its 95 % interval [low, high]: a t-interval on the per-seed differences when the "
               "method and ce ran the same seeds, else Welch's; 'within noise' when the interval contains 0.")


@dataclass
class Report:
    out: Path
    groups: list[Group]
    unfinished: list[str]
    notes: list[str]
    plots: list[tuple[str, str]]  # (caption, file name under out)
    text: str  # what results.md holds and the terminal shows


def compare(paths, out: str | Path | None = None, note: str | None = None, title: str = "selfkd results",
            overwrite: bool = False, sections=None, wait: bool = False) -> Report:
    """Read the run folders (or folders holding run folders) in ``paths`` and write ``results.md``,
    ``results.csv``, PNG plots and ``index.html`` to ``out`` (default ``reports/<timestamp>``): a folder selfkd made
    for a report, or an empty one (:func:`~selfkd.runfolder.report_folder`; ``overwrite`` replaces a report there).
    Each file is written atomically; a report that cannot be written whole is not left half-written.
    ``sections(out)``: more sections after the comparison (``selfkd tune``'s), as ``(markdown lines, HTML parts,
    plots)``, its plots written to ``out``. ``wait``: for another process writing the report there, then replace it."""
    runs, empty = load_runs(paths)
    out = Path(out) if out else Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    groups = summarize(runs)
    unfinished = unfinished_lines(runs)
    warnings = notes(groups) + [f"{p} holds no run folder; ignored." for p in empty]
    warnings += [f"{r.path}: {r.examples_problem}; its predictions are left out of the figure of examples."
                 for r in runs if r.examples_problem]
    header = ([note] if note else []) + [HOW_TO_READ]

    lines = [f"# {title}", "", *header, "", markdown_table(groups) if groups else "No finished run yet.", ""]
    lines += [f"Note: {w}" for w in warnings]
    for caption, rows in class_tables(groups):  # segmentation runs
        lines += ["", f"## {caption}", "", markdown_rows(rows)]
    if unfinished:
        lines += ["", "## Unfinished runs", "", *(f"- {u}" for u in unfinished)]
    then = f"Nothing of the report is left in {out}. Free some space (or make it writable), then run the command again."
    with report_folder(out, overwrite, wait):
        more_md, more_html, more_plots = sections(out) if sections else ([], [], [])
        text = "\n".join([*lines, "", *more_md]).rstrip() + "\n"
        atomic_write(out / "results.md", lambda tmp: tmp.write_text(text), then)
        atomic_write(out / "results.csv", lambda tmp: tmp.write_text(csv_text(groups)), then)
        plots = make_plots(groups, out, then)
        page = html_page(title, groups, plots, warnings, unfinished, header, more_html)
        atomic_write(out / "index.html", lambda tmp: tmp.write_text(page), then)
    return Report(out, groups, unfinished, warnings, plots + more_plots, text)
