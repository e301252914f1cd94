"""Inference weights as safetensors (no pickle): the exported backbone with its model name and options."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import CheckpointError


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


def load_backbone(path: Path, model: str | None = None, num_classes: int | None = None,
                  in_channels: int | None = None) -> tuple[torch.nn.Module, dict]:
    """``(backbone, metadata)`` from a weights file written by selfkd; ``model``, ``num_classes`` and
    ``in_channels`` override what its metadata says."""
    from .models import create_model

    state, meta = load_weights(path)
    spec = {"model": model or meta.get("model"), "num_classes": num_classes or meta.get("num_classes"),
            "in_channels": in_channels or meta.get("in_channels")}
    missing = [key for key, value in spec.items() if value is None]
    if missing:
        raise CheckpointError(f"{path} lacks the metadata {', '.join(missing)} that selfkd writes; use the "
                              "model.safetensors of a selfkd run (or name the model with --model).")
    net = create_model(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                       **meta.get("model_options", {}))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit model '{spec['model']}' with {spec['num_classes']} classes "
                              f"({str(err).splitlines()[0][:300]}).") from None
    return net, {**meta, **spec}
