"""What a checkpoint holds beyond the weights, and how a run takes it back: the run's progress, and each process's
own state (random streams, per-process buffers, statistics of a partly trained epoch).

:func:`checkpoint_payload` builds what :func:`~selfkd.engine.checkpoint.save_checkpoint` writes; :func:`restore`
reads it back into a run on resume (refusing a checkpoint the run cannot continue), and :func:`restore_own` gives
each process its own part after the DDP wrap.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from .checkpoint import LOAD_ERRORS, does_not_fit, load_run_checkpoint


@dataclass
class Progress:
    """Where a run stands: epochs done, steps into the next one, optimizer steps in all, the best test epoch so
    far (labelled as selected on the test set wherever it is shown), the training time and images so far, the best
    validation epoch so far and (``train.select: best_val``) the method's state at its end, on the CPU."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: dict | None = None
    train_time: float = 0.0
    images_seen: int = 0
    best_val: dict | None = None
    best_state: dict | None = None


def own_state(method, step, device: torch.device, mid_epoch: bool) -> dict:
    """What each process keeps for itself, on the CPU: its random streams, its buffers (DDP runs with
    ``broadcast_buffers=False``; :attr:`~selfkd.methods.Method.shared_buffers` excepted) and, ``mid_epoch``, its
    statistics of the epoch so far."""
    kept = method.state_dict().keys() - set(method.shared_buffers)
    window = step.stats.state() if mid_epoch else None
    return {"rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
            "buffers": {name: b.detach().cpu() for name, b in method.named_buffers() if name in kept},
            "window": None if window is None else {k: v.cpu() if isinstance(v, torch.Tensor) else v
                                                   for k, v in window.items()}}


def checkpoint_payload(cfg, num_classes: int, progress: Progress, method, optimizer, step, own: dict,
                       processes: list | None, world: int) -> dict:
    """The checkpoint of a run: its resolved config, progress, method and optimizer state, and the main process's
    own state (under torchrun every process's too, rank-indexed, in ``processes``)."""
    return {
        "config": cfg.to_dict(), "method": cfg.method.name, "model": cfg.model.name, "num_classes": num_classes,
        "epoch": progress.epoch, "step_in_epoch": progress.step_in_epoch, "global_step": progress.global_step,
        "method_state": method.state_dict(), "optimizer": optimizer.state_dict(), "scaler": step.scaler.state_dict(),
        "rng": own["rng"], "window": own["window"],
        "best": progress.best, "train_time": progress.train_time, "images_seen": progress.images_seen,
        "best_val": progress.best_val, **({"best_state": progress.best_state} if progress.best_state else {}),
        "world_size": world, **({"processes": processes} if processes else {}),
    }


def restore(path: Path, cfg, num_classes: int, method, optimizer, step, world: int, rank: int,
            note) -> tuple[Progress, dict]:
    """Load the checkpoint ``path`` into the method, optimizer and scaler of a run of ``cfg``; returns its progress
    and this process's own state (applied by :func:`restore_own`). ``note(text)`` tells the user about a resume
    on another number of processes."""
    ckpt = load_run_checkpoint(path, method, cfg.method.name, cfg.model.name, num_classes)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            step.scaler.load_state_dict(ckpt["scaler"])
    except LOAD_ERRORS as err:
        raise does_not_fit(path, err) from None
    _check_continuable(path, ckpt, cfg)
    processes = ckpt.get("processes") or []
    if len(processes) == world > 1:
        own = processes[rank]
    else:  # one process, or another number of them than saved it: the main process's state
        own = {"rng": ckpt["rng"], "window": ckpt.get("window")}
    if ckpt.get("world_size", world) != world:
        note(f"note: the run was saved by {ckpt['world_size']} processes and resumes on {world}; the global batch is "
             "the same, but per-process state (random streams, BatchNorm batches, per-process caches) differs from an "
             "uninterrupted run.")
    progress = Progress(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"], ckpt.get("best"),
                        ckpt.get("train_time", 0.0), ckpt.get("images_seen", 0), ckpt.get("best_val"),
                        ckpt.get("best_state"))
    return progress, own


def _check_continuable(path: Path, ckpt: dict, cfg) -> None:
    """Refuse a resume that would go back in time, change the batches of an epoch it stopped in, or change how the
    run selects its weights (the validation images, or what was kept for the selection)."""
    epochs, done, steps = cfg.train.epochs, ckpt["epoch"], ckpt["step_in_epoch"]
    if done > epochs or (done == epochs and steps):
        where = f"in epoch {done + 1} (step {steps})" if steps else f"after epoch {done}"
        raise ConfigError(f"{path} was saved {where}, past train.epochs={epochs} of this resume: a run cannot "
                          f"go back. Resume with --epochs {done + bool(steps)} or more.")
    saved, now = ckpt["config"], cfg.to_dict()
    _check_selection(path, saved, now, type(cfg)().to_dict())
    moved = [key for key in (("data", "batch_size"), ("data", "train_subset"), ("seed",))
             if _get(saved, key) != _get(now, key)]  # what decides an epoch's batches
    if steps and moved:
        changed = ", ".join(f"{'.'.join(key)} {_get(now, key)} (saved: {_get(saved, key)})" for key in moved)
        raise ConfigError(f"{path} stopped in the middle of epoch {done + 1} (step {steps}) and this resume changes "
                          f"{changed}: the rest of the epoch would not be the batches it left. Resume with the run's "
                          "own values (leave those options out).")


def _check_selection(path: Path, saved: dict, now: dict, defaults: dict) -> None:
    """Refuse a resume that validates on other images or selects otherwise than the run did (a checkpoint of a
    selfkd without these settings counts as the defaults')."""
    keys = (("data", "val_split"), ("data", "val_seed"), ("train", "select"))
    then = {key: _get(saved, key, _get(defaults, key)) for key in keys}
    fixed = [key for key in keys if then[key] != _get(now, key)]
    if fixed:
        changed = ", ".join(f"{'.'.join(key)} {_get(now, key)} (saved: {then[key]})" for key in fixed)
        raise ConfigError(f"{path} was saved by a run that validates or selects its weights otherwise than this "
                          f"resume ({changed}): its best validation epoch so far would not mean the same. Resume "
                          "with the run's own values (leave those options out), or start a new run.")


def restore_own(own: dict, method, device: torch.device, path: Path) -> dict | None:
    """This process's own state (:func:`own_state`): its random streams and its buffers (when the checkpoint has
    them for this number of processes); returns its statistics of the epoch so far (None at an epoch's end)."""
    try:
        torch.set_rng_state(own["rng"]["torch"])
        if device.type == "cuda" and own["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(own["rng"]["cuda"])
        method.load_state_dict(own.get("buffers", {}), strict=False)
    except LOAD_ERRORS as err:
        raise does_not_fit(path, err) from None
    return own["window"]


def _get(config: dict, key: tuple, default=None):
    """``config[key[0]][key[1]]...``, or ``default`` where a key is missing."""
    for part in key:
        if not isinstance(config, dict) or part not in config:
            return default
        config = config[part]
    return config
