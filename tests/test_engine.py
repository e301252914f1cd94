"""End-to-end runs through the engine and the CLI: learning, resume exactness, run folders, errors."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fault_methods  # noqa: F401  (registers the fault-injecting test methods)
from conftest import tiny_config
from hand import write_image_folder
from selfkd.engine import train
from selfkd.errors import ConfigError, Interrupted, TrainingError
from selfkd.methods import list_methods, register_method

if "test_sigterm_nan" not in list_methods():
    @register_method("test_sigterm_nan")
    class SigtermThenNan(fault_methods.NanFromStep):
        """CE whose loss is NaN from training step 3 on, which sends SIGTERM to its own process in step ``at_step``
        (1-based, both counted in its buffer, so over a resume too; 0 = never)."""

        def __init__(self, model, num_classes, at_step: int = 0):
            super().__init__(model, num_classes)
            self.at_step = at_step

        def compute_loss(self, images, targets, index=None):
            if int(self.calls) + 1 == self.at_step:
                signal.raise_signal(signal.SIGTERM)
            return super().compute_loss(images, targets, index)


SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def _weights(run_dir):
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    return ckpt["method_state"], ckpt["optimizer"]


def test_cli_run_learns_and_writes_run_folder(tmp_path, run_cli):
    cfg = tiny_config(tmp_path, epochs=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli("train", "-c", path)
    assert code == 0, err
    run = tmp_path / "run_ce"
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pt", "model.safetensors", "summary.json",
                 "reliability.json"):
        assert (run / name).exists(), name
    assert list((run / "tb").iterdir())
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.is_file()} == {
        p.name: 0o666 & ~umask for p in run.iterdir() if p.is_file()}  # model.safetensors too (safetensors: 0600)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train/loss"] < rows[0]["train/loss"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["top1"] == rows[-1]["test/top1"] > 30  # chance is 10 %
    assert "selected on the test set" in summary["best_on_test"]["note"]
    assert "final test top-1" in out


@pytest.mark.parametrize("stop_at", [16, 21])  # the end of epoch 1 (16 steps/epoch), and mid-epoch 2
def test_interrupted_and_resumed_run_equals_straight_run(tmp_path, stop_at):
    straight = tiny_config(tmp_path, method="test_sigterm", epochs=2)
    straight["run_dir"] = str(tmp_path / "straight")
    train(straight)
    split = tiny_config(tmp_path, method="test_sigterm", epochs=2)
    split["run_dir"] = str(tmp_path / "split")
    split["method"]["at_step"] = stop_at
    with pytest.raises(Interrupted, match=f"step {(stop_at - 1) % 16 + 1}.*--resume"):
        train(split)
    split["method"]["at_step"] = 0
    train(split, resume=True)
    a, opt_a = _weights(tmp_path / "straight")
    b, opt_b = _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key, state in opt_a["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_b["state"][key]["momentum_buffer"])
    rows_a = [json.loads(r) for r in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(r) for r in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in rows_a] == pytest.approx([r["train/loss"] for r in rows_b])
    assert [r["test/top1"] for r in rows_a] == [r["test/top1"] for r in rows_b]
    # Every image is counted once, including those of the stretch before the stop (for the run's img/s).
    assert (torch.load(tmp_path / "split" / "last.pt", weights_only=True)["images_seen"]
            == torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["images_seen"] == 2 * 512)


def test_run_folder_is_never_silently_reused(tmp_path):
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 64})
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    train(cfg, overwrite=True)


def test_resume_refuses_a_different_method(tmp_path, run_cli):
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 64})
    train(cfg)
    code, _, err = run_cli("train", "--resume", cfg["run_dir"], "--method", "ls")
    assert code == 2
    assert "different run" in err and "Traceback" not in err


def test_the_console_lines_show_per_cent_columns_with_a_percent_sign():
    from selfkd.commands.train import final_line
    from selfkd.engine.logger import epoch_line

    row = {"epoch": 3, "train/loss": 0.42123, "train/top1": 91.2, "test/top1": 88.1, "test/top5": 99.0,
           "test/nll": 0.3512, "test/ece": 2.1, "test/aurc": 8.12, "time/img_per_s": 5123.4}
    assert epoch_line(row, 10, "classification") == \
        "epoch 3/10  loss 0.4212  train 91.20%  test 88.10%  nll 0.351  ece 2.10%  5123 img/s"
    final = {key[len("test/"):]: value for key, value in row.items() if key.startswith("test/")}
    assert final_line({"task": "classification", "final": final}, "runs/x") == \
        "final test top-1 88.10%  top-5 99.00%  nll 0.351  ece 2.10%  aurc 8.1  (last epoch; run folder runs/x)"


def test_a_state_that_does_not_load_with_an_empty_message_is_a_one_paragraph_error(tmp_path):
    from selfkd.engine.checkpoint import load_run_checkpoint, save_checkpoint

    class Refuses(torch.nn.Module):
        def load_state_dict(self, state, strict=True):
            raise KeyError()  # its message is empty

    save_checkpoint(tmp_path / "last.pt", {
        "config": {}, "method": "ce", "model": "m", "num_classes": 2, "epoch": 1, "step_in_epoch": 0,
        "global_step": 4, "method_state": {}, "optimizer": {}, "rng": {"torch": torch.get_rng_state()}}, "")
    with pytest.raises(ConfigError, match=r"does not fit this run's model or method options \(KeyError\)\. Use"):
        load_run_checkpoint(tmp_path / "last.pt", Refuses(), "ce", "m", 2)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_corrupt_or_foreign_checkpoint(tmp_path, run_cli, content):
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 64})
    train(cfg)
    ckpt = tmp_path / "run_ce" / "last.pt"
    if content is None:
        torch.save({"state_dict": {}}, ckpt)  # someone else's checkpoint
    else:
        ckpt.write_bytes(content)
    code, _, err = run_cli("train", "--resume", cfg["run_dir"])
    assert code == 2
    assert ("not a readable selfkd checkpoint" in err or "not a selfkd checkpoint" in err) and "Traceback" not in err


def test_truncated_checkpoint(tmp_path, run_cli):
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 64})
    train(cfg)
    ckpt = tmp_path / "run_ce" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code, _, err = run_cli("train", "--resume", cfg["run_dir"])
    assert code == 2 and "corrupt, truncated" in err


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, method="test_nan", epochs=2, data={"train_subset": 256})  # 8 steps per epoch
    cfg["method"]["from_step"] = 11  # NaN in epoch 2, after the epoch-1 checkpoint
    with pytest.raises(TrainingError, match=r"Non-finite loss \(poison\) at training step 11 \(epoch 2\)"):
        train(cfg)
    ckpt = torch.load(tmp_path / "run_test_nan" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 0)  # the last good checkpoint, not overwritten
    assert all(torch.isfinite(v).all() for v in ckpt["method_state"].values() if v.is_floating_point())
    assert not (tmp_path / "run_test_nan" / "summary.json").exists()


def test_nonfinite_step_number_after_a_mid_epoch_resume(tmp_path):
    """The step a NaN is reported at counts from the run's start, also when the epoch was resumed in its middle (the
    steps before the resume were counted twice)."""
    cfg = tiny_config(tmp_path, method="test_sigterm_nan", epochs=1, data={"train_subset": 256})  # 8 steps per epoch
    cfg["method"]["at_step"] = 2
    with pytest.raises(Interrupted, match="at epoch 1, step 2"):
        train(cfg)
    cfg["method"]["at_step"] = 0
    with pytest.raises(TrainingError, match=r"Non-finite loss \(poison\) at training step 3 \(epoch 1\)"):
        train(cfg, resume=True)


def test_a_resume_with_more_epochs_is_what_the_next_resume_continues(tmp_path, run_cli):
    """`--resume RUN --epochs 3` writes the settings it runs with into config.yaml: stopped again, a plain `--resume`
    trains on to epoch 3 (it used to reload 1 epoch and "finish" with epoch 2's weights as a 1-epoch run)."""
    cfg = tiny_config(tmp_path, method="test_sigterm", epochs=1, data={"train_subset": 64})  # 2 steps per epoch
    train(cfg)
    run = Path(cfg["run_dir"])
    code, _, err = run_cli("train", "--resume", run, "--epochs", "3", "--set", "method.at_step=3")
    assert code == 130 and "Stopped by SIGTERM at epoch 3, step 1" in err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3
    code, out, err = run_cli("train", "--resume", run)
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_open_run_refuses_a_folder_filled_after_the_checks_and_leaves_no_marker(tmp_path):
    """Under the lock the folder is checked again; a marker this call made must not pass that check (a folder that
    was empty when the run was checked and holds someone's files now), and is removed when it refuses."""
    from selfkd.runfolder import open_run

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="selfkd did not make it"):
        open_run(folder, resume=False, overwrite=False)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_forked_processes_do_not_hold_the_run_folder(tmp_path):
    """A DataLoader worker is a fork of the process that holds the run folder's lock: its copy of the lock must not
    keep the folder locked once the process that took it released it (or died)."""
    import multiprocessing
    import time

    from selfkd.runfolder import check_free, open_run, release

    lock = open_run(tmp_path / "run", resume=False, overwrite=False)
    context = multiprocessing.get_context("fork")
    started = context.Event()

    def worker():
        started.set()
        time.sleep(60)

    child = context.Process(target=worker)
    child.start()
    try:
        assert started.wait(60)
        release(lock)
        check_free(tmp_path / "run")  # it said "in use by another selfkd process" while the child lived
    finally:
        child.terminate()
        child.join()


def test_processes_checking_a_run_folder_together_do_not_refuse_each_other(tmp_path):
    """The processes of one torchrun check the run folder at the same moment: a check in progress (a lock held to
    check) must not make another check refuse the folder, while a run holding the folder is refused."""
    import fcntl
    import os

    from selfkd.runfolder import MARKER, check_free, open_run, release

    lock = open_run(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="in use by another selfkd process"):
        check_free(tmp_path / "run")
    release(lock)
    other = os.open(tmp_path / "run" / MARKER, os.O_RDONLY)
    try:
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)  # another process's check, caught while it holds its lock
        check_free(tmp_path / "run")  # it said "in use by another selfkd process (pid of the last run)"
    finally:
        os.close(other)


def test_a_failed_start_shuts_the_process_group_down(tmp_path, monkeypatch):
    import selfkd.engine.trainer as trainer

    calls = []
    monkeypatch.setattr(trainer.dist_utils, "shutdown", lambda: calls.append("shutdown"))
    with pytest.raises(ConfigError, match="Unknown method"):
        train(tiny_config(tmp_path, method="nosuch", epochs=1))
    assert calls == ["shutdown"]


def test_ctrl_c_right_after_the_folder_is_made_says_how_to_start_over(tmp_path, monkeypatch):
    from selfkd.engine.trainer import Trainer
    from selfkd.runfolder import release

    real = Trainer._open

    def interrupted(self, *args):
        release(real(self, *args))  # the folder is made and config.yaml written
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_open", interrupted)
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 32})
    with pytest.raises(Interrupted, match="nothing to resume; start over with `selfkd train -c .* --overwrite`"):
        train(cfg)  # it said "nothing was written. Run the same command again", which is refused


def test_nonfinite_skip_option_counts_skipped_steps(tmp_path):
    cfg = tiny_config(tmp_path, method="test_nan", epochs=1, data={"train_subset": 256},
                      train={"epochs": 1, "device": "cpu", "progress": False, "nonfinite": "skip"})
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run_test_nan" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/skipped_steps"] == 6  # steps 3..8 of 8


def test_eval_commands(tmp_path, run_cli):
    """Both evaluate as the run did: its dataset options, image size, normalisation and precision (bf16 here, so
    every metric is reproduced exactly only in bf16 too)."""
    cfg = tiny_config(tmp_path, epochs=1, data={"image_size": 24, "mean": [0.4, 0.5, 0.6]})
    cfg["train"]["amp"] = "bf16"
    summary = train(cfg)
    run = Path(cfg["run_dir"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["amp"] = "auto"  # as on a GPU, where auto trains in bf16; here auto would evaluate in float32
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    code, out, err = run_cli("eval", "--run", run, "--device", "cpu")
    assert code == 0, err
    result = json.loads(out)
    for key in ("top1", "top5", "nll", "ece", "aurc"):
        assert result[key] == summary["final"][key], key
    assert "reliability" not in result
    code, out, err = run_cli("eval", "--weights", run / "model.safetensors", "--dataset", "synthetic", "--device", "cpu",
                             "--batch-size", "128")
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == "cifar_resnet18"
    for key in ("top1", "top5", "nll", "ece", "aurc"):
        assert result[key] == summary["final"][key], key


@pytest.mark.parametrize("args, message", [
    (["--method", "lightsdk"], "Unknown method 'lightsdk'. Did you mean 'lightskd'?"),
    (["--model", "resnet81"], "Unknown model 'resnet81'."),
    (["--dataset", "cifar1000"], "Unknown dataset 'cifar1000'. Did you mean 'cifar100'?"),
    (["--set", "optim.momentun=0.9"], "unknown key 'optim.momentun'. Did you mean 'momentum'?"),
    (["--set", "train.epochs=ten"], "'train.epochs': Input should be a valid integer"),
    (["--set", "method.alpha=2"], "Unknown option 'alpha' for method 'ce'."),
])
def test_user_mistakes_are_one_paragraph_errors(tmp_path, run_cli, args, message):
    code, out, err = run_cli("train", "-c", SMOKE, "--run-dir", tmp_path / "run", *args)
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing was created


def test_missing_dataset_names_layout_and_places(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.delenv("SELFKD_DATA", raising=False)
    code, _, err = run_cli("train", "--dataset", "cifar100", "--data-dir", tmp_path / "empty", "--epochs", "1")
    assert code == 2 and "Dataset 'cifar100' was not found" in err
    assert "cifar-100-python" in err and str(tmp_path / "empty") in err and "/usr/share/datasets" in err


def test_image_files_train_on_cpu_in_the_models_layout(tmp_path):
    """PyTorch's CPU convolution backward crashes natively on channels_last images for some shapes (a 1×1
    stride-2 convolution on 64-px images of a width-4 ResNet): the loaders give the model's layout."""
    write_image_folder(tmp_path / "images")
    cfg = tiny_config(tmp_path, epochs=1, model={"name": "cifar_resnet18", "width": 4},
                      data={"dataset": "imagefolder", "data_dir": str(tmp_path / "images"), "options": {},
                            "image_size": 64, "workers": 0, "batch_size": 2})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "selfkd", "train", "-c", str(tmp_path / "cfg.yaml")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_last_batch_too_small_for_the_method_is_left_out_on_every_process():
    from selfkd.data.samplers import Batches

    # 17 images, batches of 8 over 2 processes: the last image would be padded to one per process.
    ranks = [Batches(17, 8, rank=r, world=2, min_batch=2) for r in range(2)]
    assert [len(b) for b in ranks] == [2, 2] and ranks[0].dropped == 1
    served = torch.cat([torch.cat(list(b)) for b in ranks])
    assert sorted(served.tolist()) == sorted(ranks[0]._order()[:16].tolist())  # the shuffle's first 16, once each
    # 19 images: the last 3 are padded to 2 per process, enough.
    assert len(Batches(19, 8, world=2, min_batch=2)) == 3 and Batches(19, 8, world=2, min_batch=2).dropped == 0
    with pytest.raises(ConfigError, match="cannot be split evenly over 2 processes"):
        Batches(17, 7, world=2)
    with pytest.raises(ConfigError, match="at least 2 images per process"):
        Batches(17, 2, world=2, min_batch=2)


@pytest.mark.parametrize("world, n, batch", [(3, 7, 6), (4, 9, 8), (4, 18, 8)])
def test_a_last_batch_smaller_than_the_processes_gives_every_process_images(world, n, batch):
    """The last global batch is padded by repeating it until every process has an image (it was padded once, so
    with 1 image over 3 or 4 processes some got none)."""
    from selfkd.data.samplers import Batches

    ranks = [Batches(n, batch, rank=r, world=world) for r in range(world)]
    last = [list(b)[-1] for b in ranks]
    left = ranks[0]._order()[(len(ranks[0]) - 1) * batch:]
    assert [len(x) for x in last] == [-(-len(left) // world)] * world
    assert set(torch.cat(last).tolist()) == set(left.tolist())


def test_torchrun_with_a_gpu_index_or_no_gpu_is_refused(monkeypatch):
    from selfkd.engine.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="cuda:7"):  # it used to train on the CPU without a word
        init_distributed("cuda:7")
    with pytest.raises(ConfigError, match="not a device selfkd runs on"):
        init_distributed("meta")
