"""``selfkd compare RUN_DIR... [--out DIR]``: a table, plots and an HTML page from finished run folders."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .page import html_page
from .plots import make_plots
from .runs import load_runs
from .table import Group, csv_text, markdown_table, notes, summarize, unfinished_lines

HOW_TO_READ = ("Last-epoch test metrics (summary.json 'final'), never the best test epoch. Top-1: mean ± sample "
               "standard deviation over seeds (n runs); other metrics: means. Δ top-1: difference of mean top-1 to "
               "`ce` on the same dataset and model.")


@dataclass
class Report:
    out: Path
    groups: list[Group]
    unfinished: list[str]
    notes: list[str]
    plots: list[tuple[str, str]]  # (caption, file name under out)
    text: str  # what results.md holds and the terminal shows


def compare(paths, out: str | Path | None = None, note: str | None = None, title: str = "selfkd results") -> Report:
    """Read the run folders (or folders holding run folders) in ``paths`` and write ``results.md``,
    ``results.csv``, PNG plots and ``index.html`` to ``out`` (default ``reports/<timestamp>``)."""
    runs, empty = load_runs(paths)
    out = Path(out) if out else Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    groups = summarize(runs)
    unfinished = unfinished_lines(runs)
    warnings = notes(groups) + [f"{p} holds no run folder; ignored." for p in empty]
    header = ([note] if note else []) + [HOW_TO_READ]

    lines = [f"# {title}", "", *header, "", markdown_table(groups) if groups else "No finished run yet.", ""]
    lines += [f"Note: {w}" for w in warnings]
    if unfinished:
        lines += ["", "## Unfinished runs", "", *(f"- {u}" for u in unfinished)]
    text = "\n".join(lines).rstrip() + "\n"
    (out / "results.md").write_text(text)
    (out / "results.csv").write_text(csv_text(groups))
    plots = make_plots(groups, out)
    (out / "index.html").write_text(html_page(title, groups, plots, warnings, unfinished, header))
    return Report(out, groups, unfinished, warnings, plots, text)


def cmd_compare(args) -> int:
    report = compare(args.runs, args.out)
    print(report.text, end="")
    print(f"\nReport: {report.out / 'index.html'} (table: results.md, results.csv; {len(report.plots)} plots)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="table, plots and an HTML page comparing finished runs",
                              description="Group runs by (dataset, model, method) and report last-epoch test "
                                          "metrics over seeds, with plots and an index.html.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders, or folders holding run folders (e.g. a sweep folder, or runs/)")
    p.add_argument("--out", help="report folder (default reports/<timestamp>)")
    p.set_defaults(func=cmd_compare)
