"""Checkpoints: written atomically, read without unpickling code, refused when foreign.

``last.pt`` holds everything to resume exactly (method and model state, optimizer, scaler, RNG,
position in the epoch). It is loaded with ``torch.load(weights_only=True)``, so a malicious file
cannot run code. Exported inference weights are safetensors.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .. import __version__
from ..atomic import atomic_write
from ..errors import CheckpointError, ConfigError

FORMAT = "selfkd-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, payload: dict) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "selfkd_version": __version__, **payload}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Pass a run folder that holds last.pt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable selfkd checkpoint: it is corrupt, truncated or of another program "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Use an intact checkpoint or start a new run."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a selfkd checkpoint (no '{FORMAT}' marker); refusing to load it.")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer selfkd ({ckpt.get('selfkd_version')}); upgrade selfkd.")
    return ckpt


def check_compatible(ckpt: dict, method: str, model: str, num_classes: int, path: Path) -> None:
    """Refuse to load a checkpoint into a run with a different method, model or class count."""
    want = {"method": method, "model": model, "num_classes": num_classes}
    diffs = [f"{k}: checkpoint has {ckpt.get(k)!r}, this run has {v!r}" for k, v in want.items() if ckpt.get(k) != v]
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
    except (RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(
            f"{path} does not fit this run's model or method options ({str(err).splitlines()[0][:300]}). "
            "Use the options the run was started with."
        ) from None
    return ckpt
