"""Shared test helpers: tiny models, tiny runs, and a CLI runner that captures output."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import torch

# Two compute threads at most (the suite's timings are for 2 cores), fewer when OMP_NUM_THREADS asks for fewer.
torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS") or 2)))


def own_methods(task: str = "classification") -> list[str]:
    """selfkd's registered methods of ``task`` (test modules register fault-injecting ones too)."""
    from selfkd.methods import list_methods, method_class

    return [name for name in list_methods(task) if method_class(name, task).__module__.startswith("selfkd.")]


@pytest.fixture
def tiny_resnet():
    """A CIFAR ResNet-18 with base width 8 (same structure, ~0.18 M parameters)."""
    from selfkd import create_model

    def make(num_classes: int = 10, name: str = "cifar_resnet18", **kwargs):
        torch.manual_seed(0)
        return create_model(name, num_classes=num_classes, width=kwargs.pop("width", 8), **kwargs)

    return make


def per_step_summaries(method, loader, device, amp: str, compile_mode: str, lr: float, epochs: int = 2) -> list[dict]:
    """Train through the engine's TrainStep (SGD, momentum 0.9) and return every step's logged losses and accuracy."""
    from selfkd.engine.step import TrainStep, build_optimizer

    step = TrainStep(method, build_optimizer(method, lr, 0.9, False, 5e-4, False, device), device, amp, compile_mode)
    summaries = []
    for epoch in range(epochs):  # crosses an epoch boundary: DSR's reset, PS-KD's table read back, DLB's cache
        method.on_epoch_start(epoch, epochs)
        loader.set_epoch(epoch)
        for batch in loader:
            step.reset()
            step(batch.images, batch.targets, batch.index)
            summaries.append(step.stats.summary())
    return summaries


def tiny_config(tmp_path, method: str = "ce", epochs: int = 2, **sections) -> dict:
    """A config dict for a seconds-long CPU run on the synthetic dataset (override any section)."""
    cfg = {
        "name": f"test_{method}",
        "run_dir": str(tmp_path / f"run_{method}"),
        "seed": 0,
        "method": {"name": method},
        "model": {"name": "cifar_resnet18", "width": 8},
        "data": {"dataset": "synthetic", "options": {"num_classes": 10, "train_size": 512, "test_size": 128,
                                                      "image_size": 32},
                 "batch_size": 32, "eval_batch_size": 128},
        "optim": {"lr": 0.05, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "device": "cpu", "progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def cli(*args) -> tuple[int, str, str]:
    """Run ``selfkd ARGS`` in-process: returns (exit code, stdout, stderr)."""
    from selfkd.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def run_cli():
    """:func:`cli` as a fixture."""
    return cli


@pytest.fixture(scope="session")
def slurm_cluster():
    """:func:`live_slurm` for a whole session."""
    with live_slurm() as cluster:
        yield cluster


@contextlib.contextmanager
def live_slurm():
    """A live Slurm cluster: ``scripts/slurm-local.sh up`` (``make test`` starts one when run as root with apt).
    Gives its default partition and whether accounting (sacct, which submitit reads job states from) is on. Skips,
    saying why, where there is none; fails instead under SELFKD_REQUIRE_SLURM=1 (make test sets it after starting
    the cluster, so a cluster that dies is not mistaken for a machine without Slurm)."""

    def missing(reason: str):
        if os.environ.get("SELFKD_REQUIRE_SLURM") == "1":
            pytest.fail(f"{reason} (SELFKD_REQUIRE_SLURM=1)")
        pytest.skip(f"{reason}: start one with `sudo scripts/slurm-local.sh up`, or run make test as root")

    if shutil.which("sinfo") is None:
        missing("no Slurm here (sinfo not found)")
    with pytest.MonkeyPatch.context() as mp:
        local = Path(os.environ.get("SELFKD_SLURM_DIR", "/var/lib/selfkd-slurm")) / "etc" / "slurm.conf"
        if "SLURM_CONF" not in os.environ and local.exists() and not Path("/etc/slurm/slurm.conf").exists():
            mp.setenv("SLURM_CONF", str(local))  # sbatch passes it on to the jobs (their srun, scontrol)
        if Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).resolve() == local.resolve():
            try:  # sinfo would retry a dead controller for 10 s
                pid = (local.parent.parent / "run" / "slurmctld.pid").read_text().strip()
            except OSError:
                pid = ""
            if not (pid and Path("/proc", pid).exists()):
                missing("the local test cluster is down (no slurmctld)")
        try:
            sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %T"], check=False, capture_output=True, text=True,
                                   timeout=20)
        except subprocess.TimeoutExpired:
            missing("no Slurm cluster answering (sinfo timed out)")
        states = [line.split() for line in sinfo.stdout.splitlines() if line.strip()]
        usable = [p for p, state in states if state.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
        if sinfo.returncode != 0 or not usable:
            missing(f"no Slurm cluster up (sinfo: {(sinfo.stdout + sinfo.stderr).strip()[:200] or 'no nodes'})")
        default = [p for p in usable if p.endswith("*")]
        config = subprocess.run(["scontrol", "show", "config"], check=False, capture_output=True, text=True,
                                timeout=20).stdout
        yield types.SimpleNamespace(partition=(default or usable)[0].rstrip("*"),
                                    accounting="accounting_storage/none" not in config)
