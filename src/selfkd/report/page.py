"""``index.html``: one static page with the table, the notes and every plot (relative links only)."""
from __future__ import annotations

from html import escape

from .table import Group, cells, class_tables, headers, metric_columns

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; }
td:nth-child(-n+3) { text-align: left; }
.iou td:nth-child(n+2) { text-align: right; }
figure { display: inline-block; margin: 1em 1em 1em 0; vertical-align: top; }
figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #8a5a00; }
"""


def html_page(title: str, groups: list[Group], plots: list[tuple[str, str]], notes: list[str],
              unfinished: list[str], header: list[str], extra=()) -> str:
    """The page; ``extra``: HTML parts of more sections (tuning), after the comparison's tables and plots."""
    cols = metric_columns(groups)
    rows = "\n".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells(g, cols)) + "</tr>" for g in groups)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style>", "</head>", "<body>", f"<h1>{escape(title)}</h1>",
        *(f"<p>{escape(line)}</p>" for line in header),
        *(["<table>", "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in headers(cols)) + "</tr>", rows, "</table>"]
          if groups else []),
        *(f'<p class="note">{escape(n)}</p>' for n in notes),
    ]
    for caption, (head, *body) in class_tables(groups):  # segmentation runs: IoU per class
        parts += [f"<h2>{escape(caption)}</h2>", '<table class="iou">',
                  "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in head) + "</tr>",
                  *("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in body), "</table>"]
    if unfinished:
        parts += ["<h2>Unfinished runs</h2>", "<ul>", *(f"<li>{escape(u)}</li>" for u in unfinished), "</ul>"]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<figure><img src="{escape(name)}" alt="{escape(caption)}"><figcaption>{escape(caption)}'
                  f"</figcaption></figure>" for caption, name in plots]
    parts += list(extra)
    parts += ["<p>Files: <a href=\"results.md\">results.md</a>, <a href=\"results.csv\">results.csv</a></p>",
              "</body>", "</html>"]
    return "\n".join(parts) + "\n"
