"""`selfkd tune`: search spaces, and real studies in real SQLite files run by real worker processes (`python -m
selfkd tune`), each trial a `selfkd train` child: end to end on CPU with pruning, best recipes, final runs and the
report; two workers on one study at once; a worker killed with SIGKILL mid-trial; Ctrl-C."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from selfkd.errors import ConfigError
from selfkd.registry import Choice, Range

# Six epochs of a 160-image training set (5 steps each) with a 48-image validation split: a trial takes a few seconds
# and reports six validation values, so the pruner has epochs to stop a trial in.
RECIPE = {"seed": 0, "method": {"name": "ce"}, "model": {"name": "cifar_resnet18", "width": 4},
          "data": {"dataset": "synthetic", "options": {"num_classes": 4, "train_size": 208, "test_size": 32,
                                                       "image_size": 16},
                   "batch_size": 32, "val_split": 48},
          "optim": {"lr": 0.05}, "schedule": {"name": "cosine"},
          "train": {"epochs": 6, "device": "cpu", "progress": False, "log_every": 1}}


def recipe(tmp_path, **changes) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, **changes}))
    return path


def study(out: Path, method: str):
    import optuna

    return optuna.load_study(study_name=f"{out.name}.{method}", storage=f"sqlite:///{out / 'study.db'}")


def states(out: Path, method: str) -> list[str]:
    return [t.state.name for t in study(out, method).get_trials(deepcopy=False)]


def worker(path: Path, out: Path, *extra: str, trials: int = 3) -> list[str]:
    """The command line of a worker of the study in ``out`` (ce, the learning rate searched)."""
    return [sys.executable, "-m", "selfkd", "tune", "-c", str(path), "--methods", "ce", "--trials", str(trials),
            "--space", "optim.lr=0.001:1.0:log", "--out", str(out), *extra]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# --------------------------------------------------------------------------- search spaces

def test_space_items_parse_into_ranges_and_choices():
    from selfkd.tune.space import parse_space

    assert parse_space(["optim.lr=0.01:0.3:log", "method.temperature=2,4,8", "data.batch_size=32:128",
                        "method.teacher=bifpn,bifpnc", "train.deterministic=true,false"]) == {
        "optim.lr": Range(0.01, 0.3, True), "method.temperature": Choice((2, 4, 8)),
        "data.batch_size": Range(32, 128, False), "method.teacher": Choice(("bifpn", "bifpnc")),
        "train.deterministic": Choice((True, False))}
    assert parse_space(["optim.weight_decay=1e-5:1e-3:log"]) == {"optim.weight_decay": Range(1e-5, 1e-3, True)}
    for bad, message in [("optim.lr", "expects KEY=LOW:HIGH"), ("optim.lr=", "expects KEY=LOW:HIGH"),
                         ("optim.lr=0.3:0.01", "goes from 0.3 down to 0.01 (low > high)"),
                         ("optim.lr=0:0.1:log", "a log scale cannot reach 0 or below"),
                         ("optim.lr=-1:1:log", "a log scale cannot reach 0 or below"),
                         ("optim.lr=a:b", "is not a range LOW:HIGH"), ("optim.lr=1:2:ln", "is not a range"),
                         ("method.temperature=2,,8", "lists an empty value")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_space([bad])
    with pytest.raises(ConfigError, match="gives optim.lr twice"):
        parse_space(["optim.lr=0.1:1", "optim.lr=0.2:1"])


def test_spaces_are_checked_against_the_options_and_config_keys_they_search(tmp_path):
    from selfkd.config import make_config
    from selfkd.methods import method_class
    from selfkd.tune.space import method_space, parse_space

    cfg = make_config(RECIPE)
    classes = {m: method_class(m) for m in ("ce", "lightskd", "frskd")}

    def space(method, *items):
        others = {m: c for m, c in classes.items() if m != method}
        return method_space(classes[method], method, cfg, parse_space(items), others)

    default = classes["lightskd"].search_space
    assert space("lightskd", "optim.lr=0.01:0.3:log", "method.temperature=2,4") == {
        "method.alpha": default["alpha"], "method.beta": default["beta"], "method.temperature": Choice((2, 4)),
        "optim.lr": Range(0.01, 0.3, True)}
    assert space("ce", "data.batch_size=16:64", "model.width=4,8") == {"data.batch_size": Range(16, 64, False),
                                                                      "model.width": Choice((4, 8))}
    assert space("lightskd", "method.temperature=1:4")["method.temperature"] == Range(1.0, 4.0, False)  # a float
    refusals = [
        ("ce", [], "declares no search space and --space adds none"),
        ("ce", ["method.alpha=0.1:1"], "searches an option of lightskd, frskd, not of 'ce'"),
        ("lightskd", ["method.alfa=0.1:1"], "'lightskd' has no option 'alfa'. Did you mean 'alpha'?"),
        ("ce", ["optim.lrr=0.1:1"], "unknown config key 'optim.lrr'. Did you mean 'lr'?"),
        ("ce", ["lr=0.1:1"], "unknown config key 'lr'"),
        ("ce", ["optim=0.1:1"], "names a section of the config"),
        ("ce", ["optim.lr.x=0.1:1"], "'optim.lr' is a value, not a section"),
        ("ce", ["method.name=ce,ls"], "the methods are chosen with --methods"),
        ("ce", ["data.val_split=10,20"], "decide what the trials are compared on"),
        ("ce", ["model.depth=1:2"], "model 'cifar_resnet18' has no option 'depth'"),
        ("ce", ["data.batch_size=8.5:64"], "takes whole numbers"),
        ("ce", ["data.batch_size=0:64"], "0 is not a value data.batch_size takes (should be greater than 0)"),
        ("ce", ["optim.momentum=0.5:1.5"], "1.5 is not a value optim.momentum takes (should be less than 1)"),
        ("ce", ["schedule.name=cosine,linear"], "'linear' is not a value schedule.name takes"),
        ("ce", ["schedule.name=a:b"], "is not a range"),
        ("ce", ["train.amp=0:1"], "train.amp is not a number; list the values"),
        ("lightskd", ["method.alpha=-1:1"], "-1.0 is not a value method.alpha takes"),
        ("lightskd", ["method.temperature=0:4"], "0.0 is not a value method.temperature takes"),
    ]
    for method, items, message in refusals:
        with pytest.raises(ConfigError, match=re.escape(message)):
            space(method, *items)


def test_budget_slots_count_retries_as_the_trial_they_continue():
    """Trials of a real (in-memory) study: a failed trial frees its slot, a retry holds its first try's slot, and a
    trial asked for beyond the budget is outside it however the workers interleave."""
    import optuna
    from optuna.trial import TrialState

    from selfkd.tune.study import finished, frozen, retry_callback, slot, startable, within_budget

    s = optuna.create_study(direction="maximize")
    first = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    second = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert startable(s, 3) and not startable(s, 2)
    s.tell(first, state=TrialState.FAIL)
    retry_callback()(s, frozen(first))  # as a stale or interrupted trial is enqueued again
    retried = s.ask()
    assert (retried.params, slot(frozen(retried))) == (first.params, 0) and within_budget(s, frozen(retried), 1)
    third = s.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert within_budget(s, frozen(second), 2) and not within_budget(s, frozen(third), 2)  # slots 0, 1 before it
    for t, value in ((second, 0.5), (retried, 0.7)):
        s.tell(t, value)
    s.tell(third, state=TrialState.FAIL)
    assert finished(s, 2) and not finished(s, 3) and startable(s, 3)


def test_a_study_made_otherwise_is_refused_unless_resumed(tmp_path):
    from selfkd.tune.study import open_storage, open_study

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", 30)
    made = {"method": "ce", "objective": "maximize val/top1", "space": {"optim.lr": {"low": 0.01, "high": 0.1,
                                                                                     "log": True}},
            "config": {"optim": {"lr": 0.1}}}
    assert open_study(storage, "s.ce", made, False, None, None)[1] == made
    assert open_study(storage, "s.ce", made, False, None, None)[1] == made  # the same definition continues it
    for change, words in ((("objective", "maximize val/miou"), "another objective (maximize val/top1, not maximize "
                                                               "val/miou)"),
                          (("space", {}), "another search space"), (("config", {"optim": {"lr": 0.2}}),
                                                                     "other settings (optim.lr)")):
        other = dict(made, **dict([change]))
        with pytest.raises(ConfigError, match=re.escape(f"was made with {words}")):
            open_study(storage, "s.ce", other, False, None, None)
        assert open_study(storage, "s.ce", other, True, None, None)[1] == made  # --resume: as it was made
    with pytest.raises(ConfigError, match="the storage holds no study 's.lightskd'"):
        open_study(storage, "s.lightskd", made, True, None, None)


# --------------------------------------------------------------------------- studies run by real workers

def test_tune_end_to_end_prunes_writes_the_study_the_best_recipes_the_final_runs_and_the_report(tmp_path, run_cli):
    from selfkd.config import make_config, read_yaml

    path, out = recipe(tmp_path), tmp_path / "study"
    code, stdout, err = run_cli("tune", "-c", path, "--methods", "ce,lightskd", "--trials", "3", "--space",
                                "optim.lr=0.001:1.0:log", "--out", out, "--sampler-seed", "3", "--final-seeds", "0")
    assert code == 0, stdout[-3000:] + err[-3000:]
    assert (out / "study.db").is_file() and "Traceback" not in stdout + err
    ce = study(out, "ce")
    assert len(states(out, "ce")) == 3 and {"COMPLETE", "PRUNED"} == set(states(out, "ce")), stdout[-3000:]
    assert ce.user_attrs["selfkd"]["space"] == {"optim.lr": {"low": 0.001, "high": 1.0, "log": True}}
    assert ce.user_attrs["selfkd"]["config"]["train"]["eval_test"] == "never"  # trials never see the test set
    pruned = next(t for t in ce.get_trials(deepcopy=False) if t.state.name == "PRUNED")
    run = Path(pruned.user_attrs["run_dir"])
    assert run == out / "ce" / f"trial_{pruned.number:03d}" and (run / "last.pt").is_file()
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert pruned.user_attrs["pruned_at"] in [r["epoch"] for r in rows] and len(rows) < 6  # stopped early
    assert not any(k.startswith("test/") for r in rows for k in r)
    for t in ce.get_trials(deepcopy=False):
        if t.state.name == "COMPLETE":
            summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
            assert t.value == summary["selected"]["value"] and summary["final"] == {}
    # The best recipe: the trials' config with the best trial's learning rate, tested once at the end.
    best = ce.best_trial
    built = make_config(read_yaml(out / "ce" / "best.yaml"))
    assert built.optim.lr == best.params["optim.lr"] and built.train.eval_test == "end"
    assert built.data.val_split == 48 and built.method.name == "ce"
    lightskd = study(out, "lightskd").best_trial.params
    assert set(lightskd) == {"method.alpha", "method.beta", "method.temperature", "optim.lr"}
    assert make_config(read_yaml(out / "lightskd" / "best.yaml")).method.options()["alpha"] == lightskd["method.alpha"]
    # The final runs: each best recipe retrained, tested once; the report compares them and shows the trials.
    for method in ("ce", "lightskd"):
        summary = json.loads((out / "final" / f"{method}_s0" / "summary.json").read_text())
        assert summary["final"]["top1"] >= 0 and summary["val_images"] == 48 and summary["method"] == method
    md = (out / "report" / "results.md").read_text()
    assert "| lightskd " in md and "## Tuning" in md and "### lightskd" in md and "| pruned |" in md
    for name in ("index.html", "tune_ce_history.png", "tune_ce_slice.png", "tune_ce_epochs.png"):
        assert (out / "report" / name).is_file(), name
    record = json.loads((out / "tune.json").read_text())
    assert record["methods"]["ce"]["best"]["params"] == best.params and record["final_seeds"] == [0]
    assert record["command"].startswith("selfkd tune -c ") and record["wall_s"] > 0
    # The same command again finds everything done: no trial, no run is added.
    code, stdout, _ = run_cli("tune", "-c", path, "--methods", "ce,lightskd", "--trials", "3", "--space",
                              "optim.lr=0.001:1.0:log", "--out", out, "--final-seeds", "0")
    assert code == 0, stdout + _
    assert len(states(out, "ce")) == 3 and "] start" not in stdout


def test_two_workers_share_one_sqlite_study(tmp_path):
    """Two worker processes started together on one study: the budget is met exactly, every trial has its own run
    folder, both workers ran trials, and none failed."""
    path, out = recipe(tmp_path), tmp_path / "study"
    procs = [subprocess.Popen(worker(path, out, trials=4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env()) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = study(out, "ce").get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4 and not [t for t in trials if t.state.name != "FAIL" and t not in finished]
    folders = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(folders)) == 4 and all((Path(f) / "last.pt").is_file() for f in folders)
    assert all("[ce trial" in o for o in outputs), outputs  # each worker ran at least one trial
    over = [t for t in trials if t.state.name == "FAIL"]
    assert all(not t.params for t in over)  # only trials asked for after the budget filled, never run


def test_two_lanes_of_one_worker_share_a_journal_study(tmp_path):
    """What --gpus 0,1 gives on a machine with two GPUs, on the CPU: one worker's two lanes (threads), each running
    trials at once, on Optuna's journal file storage: the budget is met exactly and two trials overlapped in time."""
    from selfkd.tune import _open, _run_method, definitions
    from selfkd.tune.trials import Lane

    path, out = recipe(tmp_path), tmp_path / "study"
    (tmp_path / "shared").mkdir()
    url = f"journal:{tmp_path / 'shared' / 'study.log'}"
    defs = definitions(str(path), ["ce"], ["optim.lr=0.001:1.0:log"], {}, [])
    stop = threading.Event()
    [ms] = _open(out, defs, 3, url, False, "none", 0, 30, stop, [], False)
    lanes = [Lane(None, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}) for _ in range(2)]
    assert _run_method(ms, lanes, stop, False, 30, time.monotonic()) == []
    trials = ms.study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials].count("COMPLETE") == 3 and len({t.user_attrs["run_dir"] for t in trials
                                                                         if t.state.name == "COMPLETE"}) == 3
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials if t.state.name == "COMPLETE")
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))  # two ran at once
    assert (tmp_path / "shared" / "study.log").stat().st_size > 0 and not (out / "study.db").exists()


def _wait_for(check, proc, timeout=300):
    deadline = time.time() + timeout
    while not check():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.1)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_worker_killed_mid_trial_is_detected_and_its_trial_retried_from_its_checkpoint(tmp_path):
    path, out = recipe(tmp_path), tmp_path / "study"
    first = out / "ce" / "trial_000"
    doomed = subprocess.Popen(worker(path, out, "--heartbeat", "1", "--pruner", "none", trials=2),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    _wait_for(lambda: (first / "last.pt").is_file(), doomed)  # its first trial has trained an epoch
    child = int((first / ".selfkd-run").read_text().split("pid ")[1].split()[0])
    doomed.kill()  # SIGKILL: no handler runs in the worker
    doomed.wait()
    deadline = time.time() + 120
    while not _gone(child):  # its training child got SIGTERM (PR_SET_PDEATHSIG), saved a checkpoint and stopped
        assert time.time() < deadline
        time.sleep(0.1)
    assert states(out, "ce") == ["RUNNING"]
    stopped = [json.loads(r)["epoch"] for r in (first / "metrics.jsonl").read_text().splitlines()]
    time.sleep(3)  # past the grace period (twice the heartbeat)
    result = subprocess.run(worker(path, out, "--heartbeat", "1", "--pruner", "none", trials=2), capture_output=True,
                            text=True, env=env(), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = study(out, "ce").get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.params == trials[0].params and retry.user_attrs["run_dir"] == str(first)  # the same run folder
    log = (out / "logs" / "ce_trial_000.log").read_text()
    assert f"Resuming {first} at epoch" in log and log.count("=== ") == 2  # continued from its checkpoint
    rows = [json.loads(r)["epoch"] for r in (first / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 7)) and stopped == rows[:len(stopped)]  # each epoch once
    assert [Path(t.user_attrs["run_dir"]).name for t in trials[1:]] == ["trial_000", "trial_002"]  # the retry is 1


def test_ctrl_c_stops_the_trial_with_a_checkpoint_and_the_next_run_continues_it(tmp_path):
    path, out = recipe(tmp_path), tmp_path / "study"
    first = out / "ce" / "trial_000"
    proc = subprocess.Popen(worker(path, out, "--pruner", "none", trials=2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())
    _wait_for(lambda: (first / "last.pt").is_file(), proc)
    proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends the worker (its children have sessions of their own)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout[-3000:] + stderr[-3000:]
    assert "Tuning interrupted; run the same command again" in stderr and "Traceback" not in stdout + stderr
    assert "Stopped by SIGINT" in stdout
    assert states(out, "ce") == ["FAIL", "WAITING"]  # the interrupted trial is enqueued again, never counted
    # --resume continues the study as it was made: no recipe or search space needed.
    result = subprocess.run([sys.executable, "-m", "selfkd", "tune", "--resume", "--methods", "ce", "--trials", "2",
                             "--out", str(out), "--pruner", "none"], capture_output=True, text=True, env=env(),
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = study(out, "ce").get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].user_attrs["run_dir"] == str(first)
    assert "Resuming" in (out / "logs" / "ce_trial_000.log").read_text()
    rows = [json.loads(r)["epoch"] for r in (first / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 7))
