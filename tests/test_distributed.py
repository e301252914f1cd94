"""torchrun DDP on CPU (gloo, 2 processes): one run folder, and the same first step as one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from conftest import tiny_config
from hand import write_image_folder


def _one_step_config(tmp_path, name):
    # One optimizer step over one global batch of 64, no augmentation, so both runs see the same images.
    cfg = tiny_config(tmp_path, epochs=1, data={"train_subset": 64, "batch_size": 64, "augment": "none"},
                      optim={"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}, schedule={"name": "constant"})
    cfg["run_dir"] = str(tmp_path / name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(*args, nproc=2, script=None, timeout=900):
    """``selfkd ARGS`` under torchrun on the CPU; ``script``: a Python file to run instead of ``-m selfkd``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    target = [str(script)] if script else ["-m", "selfkd"]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *target, *args], env=env, capture_output=True, text=True, timeout=timeout)


WITH_FAULT_METHODS = f'''
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import fault_methods  # noqa: F401  (registers the fault-injecting test methods)
from selfkd.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_two_rank_run_matches_one_process_first_step(tmp_path):
    single = subprocess.run([sys.executable, "-m", "selfkd", "train", "-c", str(_one_step_config(tmp_path, "one"))],
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr
    result = _torchrun("train", "-c", str(_one_step_config(tmp_path, "two")))
    assert result.returncode == 0, result.stderr[-3000:]
    # One run folder, written once.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["method_state"]
    expected = _expected_ddp_step(tmp_path)
    for name, value in expected.items():
        assert torch.allclose(two[name], value, atol=1e-4, rtol=1e-3), name  # float32 summation order differs
    # One metrics row per epoch, written by rank 0 only.
    rows = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0 <= rows[0]["test/top1"] <= 100


def _expected_ddp_step(tmp_path):
    """One process computing what 2-rank DDP must: the same initial weights, rank r's share of the global batch
    (samples r, r+2, ... with its own BatchNorm statistics), gradients averaged over ranks, one SGD step."""
    from selfkd import create_method, create_model
    from selfkd.config import build_config
    from selfkd.data import build_train_loader, load_dataset
    from selfkd.data.needs import DataNeeds

    cfg = build_config(yaml.safe_load((tmp_path / "two.yaml").read_text()))
    splits = load_dataset("synthetic", None, **cfg.data.options)
    loader = build_train_loader(splits, cfg.data, DataNeeds(), torch.device("cpu"), seed=0)
    loader.set_epoch(0)
    batch = next(iter(loader))
    torch.manual_seed(0)
    method = create_method("ce", create_model("cifar_resnet18", num_classes=10, width=8))
    params = dict(method.named_parameters())
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    for rank in range(2):
        method.zero_grad()
        method(batch.images[rank::2].contiguous(), batch.targets[rank::2]).loss.backward()  # the model's layout
        for name, p in params.items():
            grads[name] += p.grad / 2
    return {name: (p - cfg.optim.lr * grads[name]).detach() for name, p in params.items()}


def test_two_rank_pskd_and_cskd_runs_finish(tmp_path):
    """PS-KD's table and CS-KD's partners under torchrun, with a validation split held out (evaluated on both ranks'
    shards, the best epoch's weights selected)."""
    for method in ("pskd", "cskd"):
        cfg = tiny_config(tmp_path, method=method, epochs=2, data={"train_subset": 128, "batch_size": 32,
                                                                   "val_split": 33},
                          train={"epochs": 2, "device": "cpu", "progress": False, "select": "best_val"})
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        result = _torchrun("train", "-c", str(path))
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((tmp_path / f"run_{method}" / "summary.json").read_text())
        assert (summary["world_size"], summary["train_images"], summary["val_images"]) == (2, 128, 33)
        rows = [json.loads(r) for r in (tmp_path / f"run_{method}" / "metrics.jsonl").read_text().splitlines()]
        best = max(rows, key=lambda r: (r["val/top1"], -r["epoch"]))
        assert summary["selected"]["epoch"] == best["epoch"] and summary["selected"]["value"] == best["val/top1"]
        assert all(round(r["val/top1"] * 33 / 100, 6).is_integer() for r in rows)  # all 33 images, once each
    state = torch.load(tmp_path / "run_pskd" / "last.pt", weights_only=True)["method_state"]
    # Every training image's row (128: the subset of what the validation split left) was written on rank 0, half of
    # them from rank 1's predictions.
    assert state["table"].shape == (128, 10) and bool((state["table"].sum(dim=1) > 0.99).all())


NAN_ON_RANK_1 = '''
import os, sys
import torch
from selfkd.cli import main
from selfkd.losses import cross_entropy
from selfkd.methods import Method, MethodOutput, register_method


@register_method("nan_on_rank_1")
class NanOnRank1(Method):
    """CE whose loss is NaN on rank 1 only, at its second step."""

    def __init__(self, model, num_classes):
        super().__init__(model, num_classes)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def compute_loss(self, images, targets, index=None):
        logits, _ = self.backbone(images)
        self.calls += 1
        ce = cross_entropy(logits, targets)
        poison = torch.where((self.calls == 2) & (int(os.environ["RANK"]) == 1), float("nan"), 0.0)
        return MethodOutput(logits, ce + poison, {"ce": ce, "poison": poison})


sys.exit(main(["train", "-c", sys.argv[1]]))
'''


def test_a_nan_loss_on_one_rank_stops_every_rank_with_the_message(tmp_path):
    cfg = tiny_config(tmp_path, method="nan_on_rank_1", epochs=1, data={"train_subset": 256})
    cfg["train"]["log_every"] = 2
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "nan_run.py").write_text(NAN_ON_RANK_1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(tmp_path / "nan_run.py"), str(tmp_path / "nan.yaml")],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0
    # Rank 0's loss was finite, yet it reports rank 1's NaN (it used to die in a collective instead).
    assert "Non-finite loss (poison) at training step 2 (epoch 1)" in result.stderr, result.stderr[-3000:]
    assert "Connection closed" not in result.stderr


def _worker_of_rank(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the torchrun worker with ``RANK=rank`` (a child of the launcher's agent)."""
    import time

    deadline = time.time() + 300
    while time.time() < deadline:
        for pid in os.listdir("/proc"):
            try:
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except (OSError, ValueError):
                continue
            if f"RANK={rank}".encode() in env and int(stat[1]) == launcher.pid:
                return int(pid)
        time.sleep(0.1)
    raise AssertionError("no worker found")


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 1 alone gets SIGTERM mid-epoch; the ranks agree on it within a step (log_every is larger than the epoch,
    so the old check every log_every steps never ran) and stop together after one checkpoint."""
    import signal
    import time

    cfg = tiny_config(tmp_path, epochs=2, model={"name": "cifar_resnet18", "width": 4},
                      data={"options": {"num_classes": 4, "train_size": 4096, "test_size": 16, "image_size": 16},
                            "batch_size": 16},
                      train={"epochs": 2, "device": "cpu", "progress": False, "log_every": 100_000})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "selfkd", "train", "-c", str(tmp_path / "cfg.yaml")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run_ce"
    worker = _worker_of_rank(launcher, 1)
    while not (run / "config.yaml").exists():  # training starts right after the run folder is made
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(worker, signal.SIGTERM)
    out, err = launcher.communicate(timeout=600)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["world_size"]) == (0, 2) and 0 < ckpt["step_in_epoch"] < 256, err[-3000:]
    assert (f"Stopped by a stop request (Ctrl-C or SIGTERM) to another process at epoch 1, step "
            f"{ckpt['step_in_epoch']}; checkpoint saved") in err
    assert err.count("selfkd: error:") == 1


def test_torchrun_on_a_folder_that_holds_a_run_is_refused_by_every_rank(tmp_path):
    import selfkd
    from selfkd.engine import train

    path = _one_step_config(tmp_path, "two")
    train(yaml.safe_load(path.read_text()))
    again = _torchrun("train", "-c", str(path))
    assert again.returncode != 0 and again.stderr.count("selfkd: error: The run folder") == 1
    assert "already holds a run" in again.stderr
    assert str(Path(selfkd.__file__).parent) not in again.stderr  # no traceback from a worker (torchrun adds its own)


def test_two_rank_run_on_image_files_with_an_odd_test_set_resumes_exactly(tmp_path):
    """LightSKD (per-process DSR cache) on image files under torchrun, evaluated one test image per process per step
    on 3 test images (rank 1 has none in the second step: it crashed), stopped by SIGTERM mid-epoch and resumed:
    the same weights as an uninterrupted run (each process resumes its own random streams, buffers and statistics),
    and one final line."""
    write_image_folder(tmp_path / "images", train=16, val=(2, 1))
    script = tmp_path / "faults.py"
    script.write_text(WITH_FAULT_METHODS)
    # 4 steps per epoch. SIGTERM in step 5; the processes agree on it after the next step: stopped at epoch 2, step 2.
    for name, at_step in (("straight", 0), ("split", 5)):
        cfg = tiny_config(tmp_path, method="test_lightskd_stop", epochs=2, model={"name": "cifar_resnet18", "width": 4},
                          data={"dataset": "imagefolder", "data_dir": str(tmp_path / "images"), "options": {},
                                "image_size": 16, "workers": 0, "batch_size": 8, "eval_batch_size": 1},
                          train={"epochs": 2, "device": "cpu", "progress": False, "deterministic": True})
        cfg.update(run_dir=str(tmp_path / name), method={"name": "test_lightskd_stop", "at_step": at_step})
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    straight = _torchrun("train", "-c", str(tmp_path / "straight.yaml"), script=script)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert straight.stdout.count("final test top-1") == 1  # rank 1 printed one too (nan)
    split = _torchrun("train", "-c", str(tmp_path / "split.yaml"), script=script)
    assert split.returncode != 0 and split.stderr.count("selfkd: error: Stopped by SIGTERM at epoch 2, step 2") == 1, \
        split.stderr[-3000:]
    resumed = _torchrun("train", "--resume", str(tmp_path / "split"), "--set", "method.at_step=0", script=script)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert len(b["processes"]) == 2 and not torch.equal(*(p["buffers"]["dsr_prev"] for p in b["processes"]))
    for key, value in a["method_state"].items():
        assert torch.equal(value, b["method_state"][key]), key
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("straight", "split")]
    assert summaries[0]["final"] == summaries[1]["final"]


FAILS_ON_RANK_1 = '''
import os, sys
from selfkd.cli import main
from selfkd.errors import ConfigError
from selfkd.methods import register_method
from selfkd.methods.ce import CrossEntropy


@register_method("fails_on_rank_1")
class FailsOnRank1(CrossEntropy):
    """CE that cannot be built on rank 1 (as with a file only that process cannot read)."""

    def __init__(self, model, num_classes):
        if os.environ["RANK"] == "1":
            raise ConfigError("rank 1 cannot build this method.")
        super().__init__(model, num_classes)


sys.exit(main(["train", "-c", sys.argv[1]]))
'''


def test_a_build_that_fails_on_one_rank_stops_every_rank_with_one_message(tmp_path):
    """Rank 0 used to wrap its method in DDP (a collective) while rank 1 waited to learn whether the build failed
    anywhere: both waited for ever."""
    cfg = tiny_config(tmp_path, method="fails_on_rank_1", epochs=1, data={"train_subset": 64})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "fails.py").write_text(FAILS_ON_RANK_1)
    result = _torchrun(str(tmp_path / "cfg.yaml"), script=tmp_path / "fails.py", timeout=120)
    assert result.returncode != 0 and result.stderr.count("selfkd: error: rank 1 cannot build this method.") == 1
    assert "] selfkd: error:" not in result.stderr and not (tmp_path / "run_fails_on_rank_1").exists()


def test_an_error_raised_by_one_process_is_printed_by_it_with_its_rank(tmp_path, run_cli, monkeypatch):
    """Under torchrun an error that the processes did not agree on (here: before the process group) is printed by the
    process that raised it, which names itself; it used to be printed by rank 0 only, so rank 1's was lost."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, _, err = run_cli("train", "--resume", tmp_path, "--overwrite")
    assert code == 2 and err.startswith("[rank 1] selfkd: error: --resume continues a run and --overwrite")
