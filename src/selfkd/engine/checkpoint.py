"""Checkpoints: written atomically, read without unpickling code, refused when foreign.

``last.pt`` holds everything to resume exactly (method and model state, optimizer, scaler, RNG,
position in the epoch). It is loaded with ``torch.load(weights_only=True)``, so a malicious file
cannot run code. Exported inference weights are safetensors.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from .. import __version__
from ..errors import CheckpointError, TrainingError

FORMAT = "selfkd-checkpoint"
FORMAT_VERSION = 1


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, then rename over ``path``: the old file survives any failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if getattr(err, "errno", None) == errno.ENOSPC or "No space" in str(err) else str(err)
        raise TrainingError(
            f"Could not write {path}: {reason}. The previous file (if any) is intact. "
            "Free some space or choose another --run-dir, then resume with `selfkd train --resume "
            f"{path.parent}`."
        ) from None


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


def save_weights(path: Path, module: torch.nn.Module, metadata: dict) -> None:
    """The deployable backbone as safetensors, with model name/options in the metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(path: Path) -> tuple[dict, dict]:
    """(state_dict, metadata) from a safetensors file written by :func:`save_weights`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No weights file at {path}.")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}).") from None
