"""The end of a study: its best configuration as a recipe, that recipe retrained with the final seeds and tested
once, and the record of the whole command (``tune.json``)."""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import yaml

from ..atomic import atomic_write
from ..config import set_key

AGAIN = "Run the same command again."


def best_recipe(ms) -> Path | None:
    """Write ``<out>/<method>/best.yaml``: the trials' config with the best complete trial's values, tested once at
    the end (``train.eval_test: end``); None while no trial completed."""
    from optuna.trial import TrialState

    if not ms.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = ms.study.best_trial
    data = copy.deepcopy(ms.definition["config"])
    for key, value in best.params.items():
        set_key(data, key, value)
    set_key(data, "train.eval_test", "end")
    data.update(name=None, run_dir=None)
    states = [t.state for t in ms.study.get_trials(deepcopy=False)]
    header = (f"# selfkd tune: the best of {states.count(TrialState.COMPLETE)} complete trials of {ms.method} "
              f"({states.count(TrialState.PRUNED)} more pruned): trial {best.number}, {ms.trials.metric} "
              f"{best.value:.4g} (epoch {best.user_attrs.get('selected_epoch')}), with\n# "
              + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
              + f".\n# Retrain and test it once: selfkd train -c {ms.trials.out / ms.method / 'best.yaml'}\n")
    path = ms.trials.out / ms.method / "best.yaml"
    text = header + yaml.safe_dump(data, sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text), AGAIN)
    return path


def final_jobs(studies, seeds: list[int], out: Path, on_gpus: bool) -> list:
    """The final runs: each method's best recipe with each seed, in ``<out>/final/<method>_s<seed>`` (finished ones
    are skipped, interrupted ones resumed, as in a sweep)."""
    from ..sweep import plan

    jobs = []
    for ms in studies:
        if ms.best is not None:
            jobs += plan(str(ms.best), [ms.method], seeds, out / "final", on_gpus=on_gpus)
    return jobs


def trial_summary(ms) -> dict:
    """A study in ``tune.json``: its definition's space and objective, its trials by state, its best trial."""
    from optuna.trial import TrialState

    states = [t.state.name.lower() for t in ms.study.get_trials(deepcopy=False)]
    summary = {"study": ms.study.study_name, "objective": ms.definition["objective"], "space": ms.definition["space"],
               "trials": {s: states.count(s) for s in dict.fromkeys(states)}}
    if ms.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = ms.study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                           "epoch": best.user_attrs.get("selected_epoch"), "recipe": str(ms.best)}
    return summary


def write_record(result, command: str, url: str, budget: int, seeds, wall_s: float, device: str,
                 threads: int) -> None:
    """``<out>/tune.json``: the command, when and where it ran (``threads``: each run's CPU threads), its wall time,
    and each study."""
    import torch

    from ..bench import environment

    record = {"command": command, "date": time.strftime("%Y-%m-%d"), "wall_s": wall_s, "storage": url,
              "budget": budget, "final_seeds": seeds or [], "interrupted": result.interrupted,
              "threads_per_run": threads,
              "methods": {ms.method: trial_summary(ms) for ms in result.studies},
              "finals": {job.name: result.codes.get(job.name) for job in result.finals},
              "machine": environment(torch.device("cuda" if device.startswith("cuda") else "cpu"))}
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(result.out / "tune.json", lambda tmp: tmp.write_text(text), AGAIN)
