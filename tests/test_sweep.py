"""`selfkd sweep`: which runs are skipped, resumed or started, the `selfkd train` arguments each gets,
and one real sweep in child processes (a resume that finishes, a failure that does not stop it)."""
from __future__ import annotations

import json

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
    summary.json or last.pt."""
    from selfkd.config import build_config

    path.mkdir(parents=True)
    stored = dict(config, seed=seed, method={"name": method}, run_dir=str(path))
    (path / "config.yaml").write_text(yaml.safe_dump(build_config(stored).to_dict()))
    if finished:
        (path / "summary.json").write_text(json.dumps({"method": method, "model": "cifar_resnet18", "seed": seed,
                                                       "dataset": "synthetic", "final": {"top1": 50.0}}))
    if checkpoint:
        (path / "last.pt").write_bytes(checkpoint)


def test_plan_skips_finished_resumes_checkpointed_and_starts_the_rest(tmp_path):
    from selfkd.cli import build_parser, config_from_args
    from selfkd.sweep import plan

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
    from selfkd.sweep import parse_list

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
    from selfkd.config import load_config
    from selfkd.demo import describe, recipe_path

    cpu, gpu = load_config(recipe_path("cpu")), load_config(recipe_path("gpu"))
    assert cpu.data.dataset == gpu.data.dataset == "fashion_mnist" and cpu.train.device == "cpu"
    assert cpu.data.train_subset and gpu.data.train_subset is None and gpu.train.epochs > cpu.train.epochs
    line = describe("cpu", cpu, 60000, 10000)
    assert f"{cpu.data.train_subset:,} of 60,000 training images" in line and f"{cpu.train.epochs} epochs" in line
    assert "device cpu" in line

    monkeypatch.setattr(datasets, "search_roots", lambda data_dir=None: [tmp_path])
    code, _, err = run_cli("demo", "--setting", "cpu", "--out", tmp_path / "demo")
    assert code == 2 and "Dataset 'fashion_mnist' was not found" in err
    assert "apt-get install dataset-fashion-mnist" in err and "./data/fashion-mnist/" in err
    assert not (tmp_path / "demo").exists()
