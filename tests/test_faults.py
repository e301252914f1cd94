"""Runs that survive faults: signals, elastic restarts, full disks (issue: preemption-safe checkpoints)."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import fault_methods  # noqa: F401  (registers the fault-injecting test methods)
from conftest import tiny_config
from selfkd.engine import train
from selfkd.engine.checkpoint import load_checkpoint
from selfkd.errors import Interrupted, TrainingError


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
    real = os.replace

    def refuse(src, dst):  # the checkpoint only: config.yaml was written before it
        if Path(dst).name == "last.pt":
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    code, _, err = run_cli("train", "-c", path)
    run = tmp_path / "run_ce"
    assert code == 3 and f"Could not write {run / 'last.pt'}: Permission denied" in err and "Traceback" not in err
    assert "No checkpoint was saved yet" in err and (run / "config.yaml").is_file() and not (run / "last.pt").exists()


def test_uncreatable_run_folder_is_a_clear_error(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 64})
    cfg["run_dir"] = str(blocker / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("train", "-c", path)
    assert code == 2 and "cannot be made" in err and "is a file" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "file"]


def _cfg_file(tmp_path, method: str = "ce", **options) -> str:
    cfg = tiny_config(tmp_path, method=method, epochs=2, data={"train_subset": 64})
    cfg["method"].update(options)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_second_ctrl_c_during_the_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch, run_cli):
    """SIGTERM in epoch 2 asks for a stop; a Ctrl-C while that stop's checkpoint is written aborts it: the epoch-1
    checkpoint stays intact, no temporary file is left, and the message gives the command that continues."""
    path = _cfg_file(tmp_path, "test_sigterm", at_step=3)  # 2 steps per epoch
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        real_save(obj, f, *args, **kwargs)
        if len(calls) == 2:  # the stop's checkpoint, half done
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(torch, "save", save)
    code, _, err = run_cli("train", "-c", path)
    run = tmp_path / "run_test_sigterm"
    assert code == 130 and "Aborted by a second Ctrl-C at epoch 2" in err and "Traceback" not in err
    assert f"Continue with `selfkd train --resume {run}`." in err
    assert (load_checkpoint(run / "last.pt")["epoch"], len(calls)) == (1, 2)
    assert not list(run.glob(".*.tmp"))


def _fail_writing(monkeypatch, suffix: str):
    """Python writes of files whose name ends with ``suffix`` fail as on a full disk."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.endswith(suffix):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_torch_writer_failure_is_one_paragraph_without_its_source_location(tmp_path, monkeypatch, run_cli):
    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", save)
    code, _, err = run_cli("train", "-c", _cfg_file(tmp_path))
    run = tmp_path / "run_ce"
    assert code == 3 and "Traceback" not in err and "inline_container" not in err
    assert f"Could not write {run / 'last.pt'}: PytorchStreamWriter failed writing file data/0" in err
    assert "No checkpoint was saved yet" in err  # the first one: nothing to resume
    assert sorted(p.name for p in run.iterdir()) == [".selfkd-run", "config.yaml", "metrics.csv", "metrics.jsonl",
                                                     "tb"]


def test_full_disk_on_the_final_weights_says_how_to_finish(tmp_path, monkeypatch, run_cli):
    _fail_writing(monkeypatch, ".model.safetensors.tmp")
    code, _, err = run_cli("train", "-c", _cfg_file(tmp_path))
    run = tmp_path / "run_ce"
    assert code == 3 and "Traceback" not in err and "the disk is full" in err
    assert f"Continue with `selfkd train --resume {run}`." in err
    assert not (run / "model.safetensors").exists() and not (run / "summary.json").exists()
    assert not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    code, out, err = run_cli("train", "--resume", run)  # all epochs trained: it only writes the final files
    assert code == 0 and "its 2 epochs are trained" in out, err
    assert (run / "model.safetensors").is_file() and (run / "reliability.json").is_file()


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_full_disk_on_export_leaves_nothing(tmp_path, monkeypatch, run_cli, fmt):
    train(tiny_config(tmp_path, epochs=1, data={"train_subset": 32}))
    run = tmp_path / "run_ce"
    _fail_writing(monkeypatch, ".tmp")
    code, _, err = run_cli("export", run, "--format", fmt)
    assert code == 3 and "Traceback" not in err and "the disk is full. The previous file (if any) is intact" in err
    assert list((run / "export").iterdir()) == []


def test_full_disk_when_the_run_folder_is_made_leaves_no_folder(tmp_path, monkeypatch, run_cli):
    import selfkd.runfolder

    real = os.open

    def full(path, *args, **kwargs):
        if str(path).endswith(selfkd.runfolder.MARKER):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(selfkd.runfolder.os, "open", full)
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 32})
    cfg["run_dir"] = str(tmp_path / "deep" / "run")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli("train", "-c", tmp_path / "cfg.yaml")
    assert code == 2 and "Traceback" not in err and "Cannot write in the run folder" in err and "disk is full" in err
    assert not (tmp_path / "deep").exists()


@pytest.fixture
def read_only(tmp_path):
    """Make a folder read-only even for root (chattr +i); skipped where the file system does not allow it."""
    made = []

    def protect(folder):
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here")
        made.append(folder)

    yield protect
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)])


def test_read_only_run_folder(tmp_path, run_cli, read_only):
    cfg = tiny_config(tmp_path, method="test_sigterm", epochs=2, data={"train_subset": 32})
    cfg["method"]["at_step"] = 1
    with pytest.raises(Interrupted):
        train(cfg)  # stopped in epoch 1: unfinished
    run = tmp_path / "run_test_sigterm"
    files = sorted(p.name for p in run.iterdir())
    read_only(run)
    code, _, err = run_cli("export", run, "--format", "torchscript")
    assert code == 2 and "Traceback" not in err and "needs a finished run folder" in err, err
    code, _, err = run_cli("train", "--resume", run)
    assert code == 2 and "Traceback" not in err and f"Cannot write in the run folder {run}" in err
    assert "make it writable" in err
    code, out, err = run_cli("eval", "--run", run, "--device", "cpu")
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir()) == files


def test_read_only_finished_run_exports_elsewhere(tmp_path, run_cli, read_only):
    train(tiny_config(tmp_path, epochs=1, data={"train_subset": 32}))
    run = tmp_path / "run_ce"
    read_only(run)
    code, _, err = run_cli("export", run, "--format", "safetensors")
    assert code == 2 and "Traceback" not in err and "cannot be made (Operation not permitted)" in err
    assert "Pass --out with a writable place" in err
    code, out, err = run_cli("export", run, "--format", "safetensors", "--out", tmp_path / "deployed.safetensors")
    assert code == 0 and (tmp_path / "deployed.safetensors").is_file(), err


def test_tensorboard_that_cannot_write_stops_with_a_note_and_the_run_goes_on(tmp_path, monkeypatch, run_cli):
    import torch.utils.tensorboard

    class Full:
        def __init__(self, logdir):
            raise OSError(errno.ENOSPC, "No space left on device", logdir)

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", Full)
    code, out, err = run_cli("train", "-c", _cfg_file(tmp_path))
    assert code == 0 and "Traceback" not in err, err
    assert err.count("note: TensorBoard logging stopped (the disk is full)") == 1
    assert (tmp_path / "run_ce" / "summary.json").is_file()
