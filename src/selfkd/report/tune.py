"""The tuning part of a report: per study, a table of its trials, its parameter importances, and Optuna's plots
(optimisation history, importances, the objective against each parameter, the validation metric per epoch of every
trial, the pruned ones included), in ``results.md`` and ``index.html`` after the comparison of the final runs (or
alone, before there are any).

Importances are PED-ANOVA's (Optuna's default evaluator; it needs no scikit-learn, which fANOVA and the
mean-decrease-in-impurity evaluator do): how much each parameter matters for reaching the better half of the complete
trials (``target_quantile=0.5``: a small budget has few complete trials, and PED-ANOVA wants several above its
quantile). Optuna draws its plots with pyplot; each figure is closed once saved.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from html import escape
from pathlib import Path

from ..atomic import atomic_write
from ..runfolder import report_folder
from .plots import slug


@dataclass
class StudyView:
    method: str
    study: object  # optuna.Study
    metric: str  # val/<headline metric>
    budget: int


def _evaluator():
    """PED-ANOVA on the better half of the complete trials (experimental in Optuna before 5)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.5)


def _importances(study) -> dict[str, float]:
    """PED-ANOVA's importances; empty while the study has too few complete trials for them (Optuna then says the
    importances would all be equal)."""
    import optuna

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            weights = optuna.importance.get_param_importances(study, evaluator=_evaluator())
        except (ValueError, RuntimeError):  # no complete trial, or no parameter
            return {}
    return {} if any("too small" in str(w.message) for w in said) else weights


def trial_rows(view: StudyView) -> list[list[str]]:
    """The trials table: number, state, the objective, the epochs it reached, its parameters, its run folder."""
    trials = view.study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    rows = [["trial", "state", view.metric, "epochs", *keys, "run folder / note"]]
    for t in trials:
        value = "" if t.value is None else f"{t.value:.2f}"
        epochs = str(max(t.intermediate_values)) if t.intermediate_values else ""
        note = t.user_attrs.get("error") or Path(t.user_attrs.get("run_dir", "")).name
        if "failed_trial" in t.system_attrs:
            note += f" (retry of trial {t.system_attrs['failed_trial']})"
        params = [f"{t.params[k]:.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, ""))
                  for k in keys]
        rows.append([str(t.number), t.state.name.lower(), value, epochs, *params, note])
    return rows


def _plots(view: StudyView, out: Path) -> list[tuple[str, str]]:
    """Optuna's matplotlib plots of the study as PNGs in ``out``; a plot the study cannot give yet is left out."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    kinds = [("history", "optimisation history", vis.plot_optimization_history),
             ("importances", "parameter importances (PED-ANOVA)",
              lambda s: vis.plot_param_importances(s, evaluator=_evaluator())),
             ("slice", "objective per parameter", vis.plot_slice),
             ("epochs", f"{view.metric} per epoch of every trial", vis.plot_intermediate_values)]
    if not _importances(view.study):
        kinds.pop(1)
    made = []
    for kind, caption, plot in kinds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = plot(view.study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this plot
                plt.close("all")
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        name = f"tune_{slug(view.method, kind)}.png"
        figure.set_size_inches(max(6.4, figure.get_figwidth()), 4.2)
        figure.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(figure)
        made.append((f"{view.method}: {caption}", name))
    return made


def _markdown_table(rows: list[list[str]]) -> list[str]:
    head, *body = rows
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in body)]


def _html_table(rows: list[list[str]]) -> list[str]:
    head, *body = rows
    return ["<table>", "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in head) + "</tr>",
            *("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in body), "</table>"]


def tune_section(views: list[StudyView], out: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """``(markdown lines, html parts, plots)`` of every study: best trial, importances, trials table; the plots are
    written to ``out``."""
    md, html, plots = ["## Tuning", ""], ["<h2>Tuning</h2>"], []
    for view in views:
        trials = view.study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        line = f"{view.method}: {len(finished)} of {view.budget} trials finished ({len(complete)} complete)."
        if complete:
            best = max(complete, key=lambda t: (t.value, -t.number))
            line += f" Best: trial {best.number}, {view.metric} {best.value:.2f}, " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()) + "."
        weights = _importances(view.study)
        if weights:
            line += " Parameter importances (PED-ANOVA): " + ", ".join(
                f"{k} {v:.2f}" for k, v in weights.items() if not math.isnan(v)) + "."
        rows = trial_rows(view)
        md += [f"### {view.method}", "", line, "", *_markdown_table(rows), ""]
        html += [f"<h3>{escape(view.method)}</h3>", f"<p>{escape(line)}</p>", *_html_table(rows)]
        made = _plots(view, out)
        html += [f'<figure><img src="{escape(name)}" alt="{escape(caption)}"><figcaption>{escape(caption)}'
                 "</figcaption></figure>" for caption, name in made]
        plots += made
    return md, html, plots


@dataclass
class TuneReport:
    out: Path
    text: str  # results.md
    plots: list[tuple[str, str]]
    compared: object | None  # the comparison of the final runs (selfkd.report.Report), None without final runs


def write_tune_report(views: list[StudyView], final_dirs: list[Path], out: Path, title: str,
                      note: str) -> TuneReport:
    """``results.md``, ``index.html`` and the plots in ``out``: the comparison of the final runs (``selfkd compare``,
    when there are any) followed by the tuning section; without final runs ``results.csv`` holds every trial."""
    import csv
    import io

    from .compare import compare
    from .page import html_page

    if final_dirs:
        report = compare(final_dirs, out, note=note, title=title, overwrite=True, wait=True,
                         sections=lambda folder: tune_section(views, folder))
        return TuneReport(out, report.text, report.plots, report)
    then = f"Nothing of the report is left in {out}. Free some space (or make it writable), then run the command again."
    with report_folder(out, overwrite=True, wait=True):  # a study's other workers write it too
        md, html, plots = tune_section(views, out)
        text = "\n".join([f"# {title}", "", note, "", "No final run yet (give --final-seeds to retrain and test the "
                          "best configurations).", "", *md]).rstrip() + "\n"
        atomic_write(out / "results.md", lambda tmp: tmp.write_text(text), then)
        table = io.StringIO()
        writer = csv.writer(table)
        for view in views:
            head, *body = trial_rows(view)
            writer.writerows([["method", *head], *([view.method, *row] for row in body)])
        atomic_write(out / "results.csv", lambda tmp: tmp.write_text(table.getvalue()), then)
        page = html_page(title, [], [], [], [], [note], html)
        atomic_write(out / "index.html", lambda tmp: tmp.write_text(page), then)
    return TuneReport(out, text, plots, None)
