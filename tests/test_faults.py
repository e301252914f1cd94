"""Runs that survive faults: signals, elastic restarts, full disks (issue: preemption-safe checkpoints)."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from selfkd.engine import train
from selfkd.engine.checkpoint import load_checkpoint
from selfkd.engine.trainer import Interrupted
from selfkd.errors import TrainingError
from conftest import tiny_config
import fault_methods  # noqa: F401  (registers the fault-injecting test methods)


def _state(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["method_state"]


def test_sigterm_to_a_training_subprocess_then_resume_matches_straight_run(tmp_path):
    cfg = tiny_config(tmp_path, epochs=3, data={"train_subset": 512},
                      train={"epochs": 3, "device": "cpu", "progress": False, "deterministic": True})
    straight = dict(cfg, run_dir=str(tmp_path / "straight"))
    train(straight)
    cfg["run_dir"] = str(tmp_path / "killed")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "selfkd", "train", "-c", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (tmp_path / "killed" / "last.pt").exists():  # the first epoch is done: we are mid-run
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "Stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    stopped = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (stopped["epoch"], stopped["step_in_epoch"]) != (3, 0)  # it really stopped early
    code = subprocess.run([sys.executable, "-m", "selfkd", "train", "--resume", str(tmp_path / "killed")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "killed")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_elastic_restart_resumes_by_itself(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, method="test_sigterm", epochs=2)
    cfg["method"]["at_step"] = 5
    with pytest.raises(Interrupted):
        train(cfg)
    cfg["method"]["at_step"] = 0
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun sets when it restarts workers
    summary = train(cfg)
    assert summary["epochs"] == 2
    rows = (tmp_path / "run_test_sigterm" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, epochs=2, data={"train_subset": 64})
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint after epoch 2
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(TrainingError, match="disk is full.*previous file.*intact"):
        train(cfg)
    ckpt = load_checkpoint(tmp_path / "run_ce" / "last.pt")
    assert ckpt["epoch"] == 1  # the epoch-1 checkpoint survived, readable
    assert not list((tmp_path / "run_ce").glob(".*.tmp"))


def test_permission_error_on_checkpoint_is_a_clear_error(tmp_path, monkeypatch, run_cli):
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 64})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    code, _, err = run_cli("train", "-c", path)
    assert code == 3 and "Permission denied" in err and "Traceback" not in err


def test_uncreatable_run_folder_is_a_clear_error(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 64})
    cfg["run_dir"] = str(blocker / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("train", "-c", path)
    assert code == 2 and "Cannot create the run folder" in err and "Traceback" not in err
