"""``selfkd compare RUN_DIR... [--out DIR]``: a table, plots and an HTML page from run folders."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="table, plots and an HTML page comparing finished runs",
                              description="Group runs by (dataset, model, method) and report last-epoch test "
                                          "metrics over seeds, with plots and an index.html.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run folders, or folders holding run folders (e.g. a sweep folder, or runs/)")
    p.add_argument("--out", help="report folder: made by selfkd compare, or empty (default reports/<timestamp>)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the report in --out (deletes only the files selfkd compare wrote there)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report import compare

    report = compare(args.runs, args.out, overwrite=args.overwrite)
    print(report.text, end="")
    print(f"\nReport: {report.out / 'index.html'} (table: results.md, results.csv; {len(report.plots)} plots)")
    return 0
