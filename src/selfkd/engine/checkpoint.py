"""Checkpoints: written atomically, read without unpickling code, refused when foreign.

``last.pt`` holds everything to resume exactly (method and model state, optimizer, scaler, RNG,
position in the epoch; under torchrun each process's own random streams, buffers and statistics too, in
``processes``). It is loaded with ``torch.load(weights_only=True)``, so a malicious file cannot run code.
Exported inference weights are safetensors.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError, ConfigError, first_line, short
from ..version import __version__

FORMAT = "selfkd-checkpoint"
FORMAT_VERSION = 1
# What resuming reads, with its type: a file with the marker but other entries was damaged or edited.
ENTRIES = {"config": dict, "method": str, "model": str, "num_classes": int, "epoch": int, "step_in_epoch": int,
           "global_step": int, "method_state": dict, "optimizer": dict, "rng": dict}
OPTIONAL = {"scaler": dict, "best": dict, "train_time": (int, float), "images_seen": int, "window": dict,
            "world_size": int, "processes": list, "best_val": dict, "best_state": dict}
# The statistics of a partly trained epoch (engine.step.StepStats.state; selfkd 0.1 did not write "labelled").
WINDOW = {"names": (list, type(None)), "sums": (torch.Tensor, type(None)), "correct": torch.Tensor,
          "skipped": torch.Tensor, "seen": int, "steps": int}


# What load_state_dict raises on a state that does not fit (wrong shapes, keys or types).
LOAD_ERRORS = (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError)


def save_checkpoint(path: Path, payload: dict, then: str) -> None:
    """Write ``payload`` atomically; ``then`` says what to do if the write fails (see :func:`atomic_write`)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "selfkd_version": __version__, **payload}
    atomic_write(path, lambda tmp: torch.save(payload, tmp), then)


def _problems(ckpt: dict) -> list[str]:
    """What is missing or of the wrong type in a checkpoint that has the selfkd marker."""
    found = [f"no '{key}'" for key in ENTRIES if key not in ckpt]
    for key, kind in {**ENTRIES, **OPTIONAL}.items():
        if ckpt.get(key) is not None and (not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool)):
            found.append(f"'{key}' is a {type(ckpt[key]).__name__}")
    if found:
        return found
    found += [f"'{key}' is negative" for key in ("epoch", "step_in_epoch", "global_step") if ckpt[key] < 0]
    for key in ("best", "best_val"):
        best = ckpt.get(key)
        if best is not None and not (len(best) == 2 and isinstance(best.get("epoch"), int)
                                     and all(map(_number, best.values()))):
            found.append(f"'{key}' is not an epoch and a metric value")
    if not all(isinstance(v, torch.Tensor) for v in (ckpt.get("best_state") or {}).values()):
        found.append("'best_state' is not a mapping of tensors")
    owners = [("", ckpt)] + [(f"processes[{rank}].", own) for rank, own in enumerate(ckpt.get("processes") or [])]
    for where, state in owners:
        found += _own_problems(where, state)
    return found


def _own_problems(where: str, state) -> list[str]:
    """What is wrong with the state of one process (``rng``, ``window``; ``buffers`` under torchrun) at ``where``."""
    if not isinstance(state, dict):
        return [f"'{where.rstrip('.')}' is a {type(state).__name__}"]
    found = []
    rng = state.get("rng")
    if not (isinstance(rng, dict) and _generator(rng.get("torch")) and isinstance(rng.get("cuda", []), list)
            and all(map(_generator, rng.get("cuda", [])))):
        found.append(f"'{where}rng' holds no torch generator states")
    window = state.get("window")
    if window is not None and not (isinstance(window, dict) and all(
            key in window and isinstance(window[key], kind) and not isinstance(window[key], bool)
            for key, kind in WINDOW.items()) and isinstance(window.get("labelled", torch.zeros(())), torch.Tensor)):
        found.append(f"'{where}window' is not the statistics of a partly trained epoch")
    buffers = state.get("buffers", {})
    if not (isinstance(buffers, dict) and all(isinstance(v, torch.Tensor) for v in buffers.values())):
        found.append(f"'{where}buffers' is not a mapping of tensors")
    return found


def _generator(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Pass a run folder that holds last.pt.")
    again = "Put an intact checkpoint there, or start the run over with --overwrite."
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): its writing was cut off. {again}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable selfkd checkpoint: it is corrupt, truncated or of another program "
            f"({type(err).__name__}: {first_line(err, limit=200)}). {again}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a selfkd checkpoint (no '{FORMAT}' marker); refusing to load it.")
    if not isinstance(ckpt.get("format_version", 0), int) or ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer selfkd ({ckpt.get('selfkd_version')}); upgrade selfkd.")
    problems = _problems(ckpt)
    if problems:
        raise CheckpointError(f"{path} has the selfkd checkpoint marker but {'; '.join(problems)}: it was damaged or "
                              f"edited. {again}")
    return ckpt


def check_compatible(ckpt: dict, method: str, model: str, num_classes: int, path: Path) -> None:
    """Refuse to load a checkpoint into a run with a different method, model or class count."""
    want = {"method": method, "model": model, "num_classes": num_classes}
    diffs = [f"{k}: checkpoint has {short(ckpt.get(k))}, this run has {short(v)}" for k, v in want.items()
             if ckpt.get(k) != v]
    if diffs:
        raise CheckpointError(f"{path} belongs to a different run ({'; '.join(diffs)}). "
                              "Resume with the run's own settings or start a new run.")


def load_run_checkpoint(path: Path, method: torch.nn.Module, method_name: str, model_name: str,
                        num_classes: int) -> dict:
    """Read a run's checkpoint, refuse it if foreign, load its method state into ``method``; returns it."""
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, method_name, model_name, num_classes, path)
    try:
        method.load_state_dict(ckpt["method_state"])
    except LOAD_ERRORS as err:
        raise does_not_fit(path, err) from None
    return ckpt


def does_not_fit(path: Path, err: BaseException) -> ConfigError:
    """The error for a checkpoint whose state does not load into this run (``err``: what loading raised)."""
    return ConfigError(f"{path} does not fit this run's model or method options ({first_line(err)}). Use the "
                       "options the run was started with.")
