"""`selfkd sweep`: which runs are skipped, resumed or started, the `selfkd train` arguments each gets,
and one real sweep in child processes (a resume that finishes, a failure that does not stop it)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from selfkd.errors import ConfigError


def recipe(tmp_path, **sections) -> tuple:
    """A tiny synthetic recipe file and the config dict it holds."""
    cfg = tiny_config(tmp_path, epochs=2, data={"options": {"num_classes": 4, "train_size": 64, "test_size": 32,
                                                            "image_size": 16}, "batch_size": 32},
                      **sections)
    for key in ("name", "run_dir"):
        cfg.pop(key)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def fake_run(path, method, seed, config, finished=True, checkpoint=b""):
    """A run folder as far as the sweep looks at it: config.yaml (complete, as the trainer writes it), and
    summary.json or last.pt; it and its sweep folder marked as selfkd's own, as they are."""
    from selfkd.config import build_config
    from selfkd.runfolder import RUN, SWEEP

    path.mkdir(parents=True)
    for folder, kind in ((path.parent, SWEEP), (path, RUN)):
        (folder / kind.marker).touch()
    stored = dict(config, seed=seed, method={"name": method}, run_dir=str(path))
    (path / "config.yaml").write_text(yaml.safe_dump(build_config(stored).to_dict()))
    if finished:
        (path / "summary.json").write_text(json.dumps({"method": method, "model": "cifar_resnet18", "seed": seed,
                                                       "dataset": "synthetic", "final": {"top1": 50.0}}))
    if checkpoint:
        (path / "last.pt").write_bytes(checkpoint)


def test_plan_skips_finished_resumes_checkpointed_and_starts_the_rest(tmp_path):
    from selfkd.cli import build_parser
    from selfkd.commands.flags import run_flags
    from selfkd.config import make_config
    from selfkd.sweep import plan

    def config_from_args(args):  # what `selfkd train` builds from its arguments
        return make_config(args.config, run_flags(args), args.overrides)

    path, cfg = recipe(tmp_path)
    out = tmp_path / "sweep"
    changed = dict(cfg, optim={**cfg["optim"], "lr": 2 * cfg["optim"]["lr"]})
    fake_run(out / "ce_s0", "ce", 0, changed)  # finished, with another lr than the recipe now gives
    fake_run(out / "ls_s0", "ls", 0, cfg, finished=False, checkpoint=b"x")
    fake_run(out / "ce_s1", "ce", 1, cfg, finished=False)  # stopped before its first checkpoint

    jobs = plan(str(path), ["ce", "ls"], [0, 1], out, {"epochs": 3}, ["optim.weight_decay=0.001"])
    assert [(j.name, j.action) for j in jobs] == [("ce_s0", "skip"), ("ls_s0", "resume"), ("ce_s1", "restart"),
                                                   ("ls_s1", "start")]
    # A kept run whose stored settings differ from what the sweep now gives is flagged (seeds, names, folders aside).
    assert jobs[0].changed == ["optim.lr", "optim.weight_decay", "train.epochs"]
    assert jobs[1].changed == ["optim.weight_decay", "train.epochs"]
    assert jobs[1].train_args == ["--resume", str(out / "ls_s0")]
    assert jobs[2].train_args[-1] == "--overwrite"

    # The start arguments are accepted by `selfkd train` and give the intended run.
    args = build_parser().parse_args(["train", *jobs[3].train_args])
    built = config_from_args(args)
    assert (built.method.name, built.seed, built.run_path) == ("ls", 1, out / "ls_s1")
    assert built.train.epochs == 3 and built.optim.weight_decay == 0.001 and built.optim.lr == cfg["optim"]["lr"]
    assert built.name == "sweep_ls_s1"

    on_gpus = plan(str(path), ["ce", "ls"], [0, 1], out, on_gpus=True)
    assert on_gpus[1].train_args == ["--resume", str(out / "ls_s0"), "--device", "cuda"]
    assert config_from_args(build_parser().parse_args(["train", *on_gpus[3].train_args])).train.device == "cuda"


def test_bad_grids_fail_before_anything_runs(tmp_path, run_cli):
    from selfkd.commands.flags import parse_list

    path, _ = recipe(tmp_path)
    code, _, err = run_cli("sweep", "-c", path, "--methods", "ce,cee", "--out", tmp_path / "s")
    assert code == 2 and "Unknown method 'cee'" in err and not (tmp_path / "s").exists()
    code, _, err = run_cli("sweep", "-c", path, "--methods", "ce", "--set", "optim.lrr=1", "--out", tmp_path / "s")
    assert code == 2 and "optim.lrr" in err and not (tmp_path / "s").exists()
    assert parse_list("0, 1,2", "seeds", int) == [0, 1, 2]
    for bad in ("0,x", "", "1,1"):
        with pytest.raises(ConfigError):
            parse_list(bad, "seeds", int)


def test_sweep_resumes_reports_failures_and_compares(tmp_path, run_cli):
    from selfkd.engine import train

    path, cfg = recipe(tmp_path)
    out = tmp_path / "sweep"
    # ce_s0: a real run interrupted after epoch 1 of 2 (trained for 1 epoch, then its target set back to 2).
    first = dict(cfg, run_dir=str(out / "ce_s0"), name="sweep_ce_s0", train={**cfg["train"], "epochs": 1})
    train(first)
    for name in ("summary.json", "model.safetensors", "reliability.json"):
        (out / "ce_s0" / name).unlink()
    stored = yaml.safe_load((out / "ce_s0" / "config.yaml").read_text())
    stored["train"]["epochs"] = 2
    (out / "ce_s0" / "config.yaml").write_text(yaml.safe_dump(stored))
    epoch1 = (out / "ce_s0" / "metrics.jsonl").read_text().splitlines()[0]
    # ls_s0: its checkpoint is corrupt, so its resume fails; the sweep must go on with ce_s0.
    fake_run(out / "ls_s0", "ls", 0, cfg, finished=False, checkpoint=b"not a checkpoint")
    fake_run(out / "ls_s1", "ls", 1, cfg)
    fake_run(out / "ce_s1", "ce", 1, cfg)
    kept = (out / "ce_s1" / "summary.json").read_text()

    code, stdout, err = run_cli("sweep", "-c", path, "--methods", "ls,ce", "--seeds", "0,1", "--out", out)
    assert code == 1, stdout + err
    assert "2 finished, 2 to resume, 0 to start" in stdout
    assert "[ls_s0] FAILED (exit code 2)" in stdout and "not a readable selfkd checkpoint" in stdout
    assert "ls_s0 (log" in err and "1 run(s) failed" in err
    assert stdout.index("[ls_s0] FAILED") < stdout.index("[ce_s0] finished")

    rows = (out / "ce_s0" / "metrics.jsonl").read_text().splitlines()
    assert rows[0] == epoch1 and [json.loads(r)["epoch"] for r in rows] == [1, 2]  # resumed, not restarted
    assert json.loads((out / "ce_s0" / "summary.json").read_text())["epochs"] == 2
    assert (out / "ce_s1" / "summary.json").read_text() == kept  # finished runs are not touched
    assert "Resuming" in (out / "logs" / "ce_s0.log").read_text()

    md = (out / "report" / "results.md").read_text()
    assert "| ce " in md and "| ls " in md and "ls_s0" in md.split("## Unfinished runs")[1]


def test_demo_recipes_and_missing_dataset_message(tmp_path, run_cli, monkeypatch):
    import selfkd.data.datasets as datasets
    from selfkd.config import make_config
    from selfkd.demo import describe, recipe_path

    cpu, gpu = make_config(recipe_path("cpu")), make_config(recipe_path("gpu"))
    assert cpu.data.dataset == gpu.data.dataset == "fashion_mnist" and cpu.train.device == "cpu"
    assert cpu.data.train_subset and gpu.data.train_subset is None  # the GPU trains on all 60,000 images
    assert gpu.train.epochs * 60000 > cpu.train.epochs * cpu.data.train_subset
    line = describe("cpu", cpu, 60000, 10000)
    assert f"{cpu.data.train_subset:,} of 60,000 training images" in line and f"{cpu.train.epochs} epochs" in line
    assert "device cpu" in line

    monkeypatch.setattr(datasets, "search_roots", lambda: [tmp_path])
    code, _, err = run_cli("demo", "--setting", "cpu", "--out", tmp_path / "demo")
    assert code == 2 and "Dataset 'fashion_mnist' was not found" in err
    assert "apt-get install dataset-fashion-mnist" in err and "./data/fashion-mnist/" in err
    assert not (tmp_path / "demo").exists()


def test_segmentation_demo_recipes_methods_and_missing_dataset_message(tmp_path, run_cli, monkeypatch):
    """`selfkd demo --task segmentation`: ce and frskd on fmnist_scenes with its own recipes and folder."""
    import selfkd.data.datasets as datasets
    import selfkd.demo
    import selfkd.sweep
    from hand import write_fashion_rectangles
    from selfkd.config import make_config
    from selfkd.demo import describe, recipe_path

    cpu, gpu = (make_config(recipe_path(s, "segmentation")) for s in ("cpu", "gpu"))
    assert cpu.data.dataset == gpu.data.dataset == "fmnist_scenes" and (cpu.train.device, gpu.train.device) == ("cpu", "cuda")
    assert gpu.train.epochs > cpu.train.epochs
    assert describe("cpu", cpu, 4000, 1000).startswith("Demo setting 'cpu': Fashion-MNIST scenes (segmentation), "
                                                       "all 4,000 training images, all 1,000 test images, 4 epochs")

    monkeypatch.setattr(datasets, "search_roots", lambda: [tmp_path])
    code, _, err = run_cli("demo", "--task", "segmentation", "--setting", "cpu", "--out", tmp_path / "demo")
    assert code == 2 and "Dataset 'fmnist_scenes' was not found" in err and "dataset-fashion-mnist" in err
    assert not (tmp_path / "demo").exists()

    write_fashion_rectangles(tmp_path / "fashion-mnist", n_train=20)  # a tiny Fashion-MNIST to compose scenes from
    monkeypatch.setenv("SELFKD_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(selfkd.sweep, "sweep", lambda config, methods, seeds, out, *a, **k: calls.append(
        (config, methods, seeds, out)) or selfkd.sweep.SweepResult([], {}, None))
    monkeypatch.setattr(selfkd.demo, "estimate", lambda *a: {})  # timing the segmenters is test_demo.py's business
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("demo", "--task", "segmentation", "--setting", "cpu")
    assert code == 0, err
    assert calls == [(str(recipe_path("cpu", "segmentation")), ["ce", "frskd"], [0], Path("runs/demo_segmentation_cpu"))]
    assert "Fashion-MNIST scenes (segmentation), all 2,500 training images" in out


def test_children_share_the_cores_and_progress_lines_count_down(tmp_path, monkeypatch, capsys):
    """Each run started at once gets cores // runs-at-once threads (never more than the caller's OMP_NUM_THREADS);
    after each run a progress line gives the runs done, and with estimates the time left."""
    import io
    import subprocess

    import selfkd.threads
    from selfkd.sweep import Job, run_jobs
    from selfkd.threads import child_thread_env

    assert child_thread_env(1, {}, total=8) == {"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8"}
    assert [child_thread_env(n, {}, total=8)["OMP_NUM_THREADS"] for n in (2, 3, 8, 16)] == ["4", "2", "1", "1"]
    assert child_thread_env(1, {"OMP_NUM_THREADS": "2"}, total=8)["OMP_NUM_THREADS"] == "2"  # the caller's limit
    assert child_thread_env(2, {"OMP_NUM_THREADS": "16"}, total=8)["OMP_NUM_THREADS"] == "4"
    assert child_thread_env(1, {"OMP_NUM_THREADS": "many"}, total=8)["OMP_NUM_THREADS"] == "8"

    started = []

    class Child:  # stands in for a `selfkd train` process
        def __init__(self, command, env, **kwargs):
            started.append(env)
            self.stdout = io.StringIO("epoch 1/1\n")

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)
    monkeypatch.setattr(selfkd.threads, "cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    jobs = [Job("ce", seed, tmp_path / f"ce_s{seed}", "start", []) for seed in range(3)]
    codes, interrupted = run_jobs(jobs, tmp_path / "logs", gpus=["0", "1"], estimates={"ce_s0": 60.0, "ce_s1": 60.0,
                                                                                        "ce_s2": 60.0})
    assert codes == {"ce_s0": 0, "ce_s1": 0, "ce_s2": 0} and not interrupted
    assert [(e["OMP_NUM_THREADS"], e["MKL_NUM_THREADS"]) for e in started] == [("4", "4")] * 3  # 8 cores, 2 at once
    gpus = [e["CUDA_VISIBLE_DEVICES"] for e in started]
    assert gpus[:2] == ["0", "1"] and gpus[2] in ("0", "1")  # the third takes whichever GPU is freed first
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Progress:")]
    assert [p.split(",")[0] for p in progress] == [f"Progress: done {k} of 3 runs" for k in (1, 2, 3)]
    assert "remaining" in progress[0] and "remaining" not in progress[-1]


def test_time_left_and_progress_line_arithmetic():
    from selfkd.sweep import progress_line, remaining_s

    assert remaining_s(100.0, 0.0, 0.0) == 100.0  # nothing finished yet: the estimates as they are
    assert remaining_s(100.0, 60.0, 50.0) == pytest.approx(120.0)  # finished runs took 1.2x their estimates
    assert remaining_s(100.0, 60.0, 50.0, slots=2) == pytest.approx(60.0)
    assert progress_line(2, 4, 200.0, 300.0) == "Progress: done 2 of 4 runs, 3.3 min elapsed, about 5.0 min remaining."
    assert progress_line(4, 4, 200.0, 0.0) == "Progress: done 4 of 4 runs, 3.3 min elapsed."
    assert progress_line(1, 4, 30.0, None) == "Progress: done 1 of 4 runs, 30.0 s elapsed."


def test_oversubscribed_run_says_so_once(monkeypatch):
    """The load a run saw while it trained, from the 1-minute load average at its start and now (the kernel's
    exponential average solved for it), against the cores; said once, after a minute of training."""
    import math

    import selfkd.threads as threads

    # 60 s at a mean of 3 runnable threads from a load of 2: L = 2·e^-1 + 3·(1 - e^-1) = 2.6321206.
    assert threads.runnable_since(2.0, 2.6321206, 60.0) == pytest.approx(3.0, abs=1e-6)
    assert threads.runnable_since(1.5, 1.5, 30.0) == pytest.approx(1.5)
    assert threads.oversubscription_note(2.4, 2, 2) is None  # within the slack of half a core
    note = threads.oversubscription_note(4.2, 2, 2)
    assert "about 4.2 threads were runnable" in note and "2 of them its own" in note and "for 2 cores" in note
    assert "OMP_NUM_THREADS=1" in note

    clock, loads = [1000.0], [0.3]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (loads[0], 0.0, 0.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    watch = threads.LoadWatch()
    clock[0], loads[0] = 1030.0, 3.0
    assert watch.note() is None  # too early: the average still mostly covers the time before the run
    clock[0] = 1060.0
    loads[0] = 0.3 * math.exp(-1) + 4.0 * (1 - math.exp(-1))  # four runnable threads on average since the start
    assert "about 4.0 threads were runnable" in watch.note()
    clock[0] = 2000.0
    assert watch.note() is None  # once
    assert threads.LoadWatch(enabled=False).note() is None
    monkeypatch.setattr(threads, "cores", lambda: 1)  # pinned to fewer CPUs than the load average counts: no check
    clock[0] = 1000.0
    watch = threads.LoadWatch()
    clock[0] = 1100.0
    assert watch.note() is None


def test_a_cpu_run_says_once_that_it_is_oversubscribed(tmp_path, monkeypatch, capsys):
    import selfkd.threads as threads
    from selfkd.engine import train

    monkeypatch.setattr(threads, "CHECK_AFTER_S", 0.0)  # check at the first epoch end
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    train(tiny_config(tmp_path, epochs=3, data={"options": {"num_classes": 4, "train_size": 32, "test_size": 16,
                                                            "image_size": 16}, "batch_size": 16}))
    out = capsys.readouterr().out
    assert out.count("note: this machine is oversubscribed: about 9.0 threads were runnable") == 1
    assert out.index("epoch 1/3") < out.index("oversubscribed") < out.index("epoch 2/3")
