"""``selfkd tune``: an Optuna study per method on the validation metric, the best configuration of each as a recipe,
its retraining with final seeds and one test, and a report.

The study folder ``<out>`` holds ``study.db`` (the default storage), per method ``base.yaml`` (the trials' recipe),
``trial_<n>/`` run folders and ``best.yaml``, ``logs/``, ``final/<method>_s<seed>/`` (with ``--final-seeds``),
``report/`` and ``tune.json`` (the command, its wall time, the machine, each study's best trial). A worker is the
same command run once more, on this machine or another with ``--storage URL``: each trial is a ``selfkd train``
child process (:mod:`selfkd.tune.trials`), one per ``--gpus`` id at a time (one at a time without), sharing the
cores as a sweep's runs do. Running the command again continues the studies: a retried trial (its worker died or was
interrupted) first, then new trials until the budget is reached.
"""
from __future__ import annotations

import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write
from ..errors import ConfigError, SelfKDError
from ..runfolder import SWEEP, TUNE, check_free, check_own, open_folder, release
from .space import from_json, method_space, parse_space, to_json
from .study import finished, open_storage, open_study, retry_callback, startable, storage_url
from .trials import MAX_FAILURES, Lane, OverBudget, TrialFailed, Trials

HEARTBEAT_S = 30  # a worker's heartbeat; its trial is retried once it has been silent for twice that
RECORD = "tune.json"


@dataclass
class MethodStudy:
    method: str
    study: object  # optuna.Study
    definition: dict  # what the study is: objective, space, the trials' config (stored with it)
    trials: Trials
    best: Path | None = None  # the best configuration as a recipe, once a trial completed


@dataclass
class TuneResult:
    out: Path
    studies: list[MethodStudy]
    finals: list = field(default_factory=list)  # sweep Jobs of the final runs
    codes: dict = field(default_factory=dict)  # final run name -> exit code
    report: object | None = None  # selfkd.report.tune.TuneReport
    interrupted: bool = False
    errors: list = field(default_factory=list)


def definitions(config, methods: list[str], space_items, flags: dict, overrides) -> dict[str, dict]:
    """Each method's study definition, every part checked before anything runs: the objective (the validation
    metric, maximised), the search space (the method's default and ``--space``) and the trials' config (the recipe
    with the method, tested never: tuning never sees the test set)."""
    from ..config import make_config
    from ..engine.setup import run_task
    from ..methods import method_class
    from ..tasks import TASKS

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    overrides = [*overrides, "train.eval_test=never"]
    task = run_task(make_config(config, flags, overrides, quiet=True))
    classes = {m: method_class(m, task) for m in methods}  # unknown names fail here, with a "did you mean"
    given = parse_space(space_items)
    out = {}
    for m in methods:
        cfg = make_config(config, {**flags, "method": m}, overrides, quiet=True)
        if cfg.data.val_split is None:
            raise ConfigError("selfkd tune optimises the validation metric, but the recipe holds no validation split; "
                              "add one (--set data.val_split=N images, a fraction such as 0.1, or dataset for the "
                              "dataset's own), so that no trial is chosen on the test set.")
        space = method_space(classes[m], m, cfg, given, {o: c for o, c in classes.items() if o != m})
        out[m] = {"method": m, "objective": f"maximize val/{TASKS[task].primary}", "space": to_json(space),
                  "config": cfg.to_dict()}
    return out


def _pruner(name: str, epochs: int, budget: int):
    """Optuna's median pruner (after a quarter of the budget finished, from a quarter of the epochs on), Hyperband
    (from one epoch to all), or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, budget // 4), n_warmup_steps=epochs // 4)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def _open(out: Path, defs: dict, budget: int, url: str, resume: bool, pruner: str, sampler_seed, heartbeat: int,
          stop, procs, on_gpus: bool) -> list[MethodStudy]:
    """Open (or make) each method's study (every one checked before anything is written), then write its trials'
    recipe. A definition of None (``--resume`` without a recipe) takes the stored one."""
    import optuna
    import yaml

    storage = open_storage(url, heartbeat)
    opened = {m: open_study(storage, f"{out.name}.{m}", d, resume, optuna.samplers.TPESampler(seed=sampler_seed),
                            None) for m, d in defs.items()}
    studies = []
    for method, (study, definition) in opened.items():
        study.pruner = _pruner(pruner, definition["config"]["train"]["epochs"], budget)
        for folder in (out / method, out / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        base = out / method / "base.yaml"
        text = yaml.safe_dump(definition["config"], sort_keys=False)
        atomic_write(base, lambda tmp, t=text: tmp.write_text(t), "Run the same command again.")
        trials = Trials(out, method, from_json(definition["space"]), base, budget,
                        definition["objective"].split()[-1], stop, procs, on_gpus)
        studies.append(MethodStudy(method, study, definition, trials))
    return studies


def _lane(ms: MethodStudy, lane: Lane, stop: threading.Event, errors: list, began: float) -> None:
    """Run trials of ``ms`` on ``lane`` while one may start (failing stale trials first, which enqueues them
    again); an error is kept in ``errors`` and stops the other lanes."""
    import optuna

    try:
        while not stop.is_set():
            optuna.storages.fail_stale_trials(ms.study)
            if not startable(ms.study, ms.trials.budget):
                return
            try:
                ms.study.optimize(lambda trial: ms.trials(trial, lane), n_trials=1, catch=(TrialFailed, OverBudget))
            except SelfKDError as err:
                if stop.is_set() and ms.trials.interrupted:
                    return
                raise err
            print(progress_line(ms, time.monotonic() - began), flush=True)
            if len(ms.trials.failures) >= MAX_FAILURES:
                raise ConfigError(f"{MAX_FAILURES} trials of {ms.method} failed in a row (trials "
                                  f"{', '.join(map(str, ms.trials.failures))}; their logs are in "
                                  f"{ms.trials.out / 'logs'}): the recipe or the search space is likely at fault. "
                                  "Fix it and run the same command again.")
    except BaseException as err:  # noqa: BLE001 (handed to the main thread)
        errors.append(err)
        stop.set()


def progress_line(ms: MethodStudy, elapsed_s: float) -> str:
    """``Progress: ce 3 of 12 trials (2 complete, 1 pruned; 1 failed), 4.2 min elapsed.``"""
    from optuna.trial import TrialState

    from ..report.table import format_duration

    states = [t.state for t in ms.study.get_trials(deepcopy=False)]
    count = {s: states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    failed = f"; {count[TrialState.FAIL]} failed" if count[TrialState.FAIL] else ""
    return (f"Progress: {ms.method} {count[TrialState.COMPLETE] + count[TrialState.PRUNED]} of {ms.trials.budget} "
            f"trials ({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned{failed}), "
            f"{format_duration(elapsed_s)} elapsed.")


def _run_method(ms: MethodStudy, lanes: list[Lane], stop: threading.Event, wait: bool, heartbeat: int,
                began: float) -> list:
    """Run ``ms``'s trials on every lane at once until none may start; with ``wait``, then wait for the trials other
    workers run (taking over any of theirs that goes stale) until the study is over. Returns the lanes' errors."""
    import optuna

    # The heartbeat, fail_stale_trials and the retry callback are experimental in Optuna; their warnings are silenced
    # for selfkd.tune's calls by a filter (catch_warnings is not thread-safe, and the lanes are threads).
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, module=r"selfkd\.tune")
    errors: list = []
    said = False
    while True:
        threads = [threading.Thread(target=_lane, args=(ms, lane, stop, errors, began), daemon=True)
                   for lane in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # short waits: the main thread handles Ctrl-C and SIGTERM
        if errors or stop.is_set() or not wait or finished(ms.study, ms.trials.budget):
            return errors
        if not said:
            print(f"{ms.method}: waiting for the trials other workers run.", flush=True)
            said = True
        stop.wait(heartbeat)


def _retry_interrupted(ms: MethodStudy) -> None:
    """Enqueue again the trials Ctrl-C or SIGTERM stopped (failed by Optuna), so that the next run of the command
    continues their run folders first; they never count as finished."""
    from optuna.trial import TrialState

    retry = retry_callback()
    for trial in ms.study.get_trials(deepcopy=True):
        if trial.number in ms.trials.interrupted and trial.state == TrialState.FAIL:
            retry(ms.study, trial)


def tune(config, methods: list[str], budget: int, space_items=(), out: str | Path = "runs/tune", flags=None,
         overrides=(), storage: str | None = None, gpus: list[str] | None = None, final_seeds: list[int] | None = None,
         resume: bool = False, pruner: str = "median", sampler_seed: int | None = None, heartbeat: int = HEARTBEAT_S,
         command: str = "selfkd tune") -> TuneResult:
    """Tune every method (see the module docstring); with ``final_seeds``, once every study is over, retrain each
    best recipe with those seeds and test it. Everything is checked before anything is written."""
    began, out = time.monotonic(), Path(out)
    if resume and not config:  # the studies' own definitions
        defs = dict.fromkeys(methods)
    else:
        defs = definitions(config, methods, space_items, flags or {}, overrides)
    url = storage_url(storage, out)
    if resume and storage is None and not (out / "study.db").is_file():
        raise ConfigError(f"--resume continues the studies in {out / 'study.db'}, which does not exist. Leave --resume "
                          "out to start them (or give --out the study folder, --storage the study's storage).")
    check_own(out, TUNE)  # marked (and locked) once the studies are checked, unless study.db must be made in it
    locks = [_open_folder(out)] if storage is None and not (out / "study.db").is_file() else []
    try:
        result, threads = _run(out, defs, budget, url, resume, pruner, sampler_seed, heartbeat, gpus, final_seeds,
                               lambda: locks or locks.append(_open_folder(out)))
        from .end import write_record

        device = "cuda" if gpus else result.studies[0].definition["config"]["train"]["device"]
        write_record(result, command, url, budget, final_seeds, time.monotonic() - began, device, threads)
        return result
    finally:
        for lock in locks:
            release(lock)


def _run(out: Path, defs: dict, budget: int, url: str, resume: bool, pruner: str, sampler_seed, heartbeat: int,
         gpus, final_seeds, lock_folder) -> tuple[TuneResult, int]:
    """Open the studies (then ``lock_folder()``), run their trials, then the final runs and the report. Returns the
    result and the CPU threads of each run."""
    import optuna

    from ..sweep import forward_signals, run_jobs

    began = time.monotonic()
    stop, procs = threading.Event(), []
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # selfkd prints each trial's outcome itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        studies = _open(out, defs, budget, url, resume, pruner, sampler_seed, heartbeat, stop, procs, bool(gpus))
        lock_folder()
        result = TuneResult(out, studies)
        lanes = _lanes(gpus)
        print(f"Tune {out}: {', '.join(defs)}, {budget} trials each, maximising {studies[0].trials.metric}, "
              f"{len(lanes)} at a time ({lanes[0].threads['OMP_NUM_THREADS']} CPU thread(s) each); storage {url}.",
              flush=True)
        with forward_signals(procs, stop):
            for ms in studies:
                result.errors += _run_method(ms, lanes, stop, bool(final_seeds), heartbeat, began)
                _retry_interrupted(ms)
                if stop.is_set():
                    break
        result.interrupted = stop.is_set() and not result.errors
        _finish(result, final_seeds, gpus, run_jobs)
    return result, int(lanes[0].threads["OMP_NUM_THREADS"])


def _open_folder(out: Path) -> int:
    """Make, mark and lock (shared with the study's other workers) the study folder ``out``: see
    :func:`~selfkd.runfolder.open_folder`."""
    return open_folder(out, TUNE, lambda marked: check_own(out, TUNE, marked), shared=True)


def _lanes(gpus: list[str] | None) -> list[Lane]:
    """One lane per GPU id (one on the recipe's device without), each child with its share of the cores."""
    from ..threads import child_thread_env

    slots = list(gpus) if gpus else [None]
    threads = child_thread_env(len(slots))
    return [Lane(slot, threads) for slot in slots]


def _finish(result: TuneResult, final_seeds, gpus, run_jobs) -> None:
    """The best recipes; with ``final_seeds`` and every study over, the final runs; the report."""
    from ..report.tune import StudyView, write_tune_report
    from .end import best_recipe

    for ms in result.studies:
        ms.best = best_recipe(ms)
    over = all(finished(ms.study, ms.trials.budget) for ms in result.studies)
    if final_seeds and over and not result.interrupted and not result.errors:
        _final_runs(result, final_seeds, gpus, run_jobs)
    done = [j.run_dir for j in result.finals if (j.run_dir / "summary.json").is_file()]
    views = [StudyView(ms.method, ms.study, ms.trials.metric, ms.trials.budget) for ms in result.studies]
    seeds = f" retrained with seeds {', '.join(map(str, final_seeds))}" if final_seeds else ""
    note = (f"Each method tuned with a budget of {result.studies[0].trials.budget} trials on "
            f"{result.studies[0].trials.metric} (validation images held out of the training set, never the test set)"
            f"; the best configuration of each{seeds} on the training set less the validation split and tested "
            "once.")
    result.report = write_tune_report(views, done, result.out / "report", f"selfkd tune {result.out.name}", note)


def _final_runs(result: TuneResult, final_seeds, gpus, run_jobs) -> None:
    """Retrain and test the best configurations in ``<out>/final`` (a sweep folder), unless another worker is doing
    so (then this one leaves them to it; two that start at once take turns, the second finding them done)."""
    from .end import final_jobs

    final = result.out / "final"
    try:
        check_free(final, SWEEP)
    except ConfigError:
        print(f"Another worker is running the final runs in {final}; it writes the report when they end.", flush=True)
        return
    lock = open_folder(final, SWEEP, lambda marked: check_own(final, SWEEP, marked), wait=True)
    try:
        result.finals = final_jobs(result.studies, final_seeds, result.out, bool(gpus))
        result.codes, result.interrupted = run_jobs(result.finals, result.out / "logs", gpus)
    finally:
        release(lock)


def print_outcome(result: TuneResult) -> int:
    """Print the report, the best recipes and what failed; the exit code of the command (0, 1 if a final run
    failed, 130 if interrupted). A worker's error is raised."""
    for err in result.errors:
        raise err
    if result.report is not None:
        print("\n" + result.report.text, end="")
        print(f"\nReport: {result.report.out / 'index.html'}")
    for ms in result.studies:
        if ms.best is not None:
            print(f"Best recipe of {ms.method}: {ms.best}")
    if result.interrupted:
        print("Tuning interrupted; run the same command again to continue it (interrupted trials continue their run "
              "folders first).", file=sys.stderr)
        return 130
    failed = [j.name for j in result.finals if result.codes.get(j.name, 0) != 0]
    if failed:
        print(f"{len(failed)} final run(s) failed: {', '.join(failed)} (logs in {result.out / 'logs'}).",
              file=sys.stderr)
        return 1
    return 0
