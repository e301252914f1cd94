"""The weights file format: safetensors (no pickle) with selfkd's metadata schema (:data:`METADATA`).

A run writes :meth:`Method.eval_model` — usually the plain backbone (``inference: backbone``), or the whole method
when it predicts with more (e.g. ONE's ensemble, BYOT's exits; ``inference: method``, rebuilt from the method's
name and options by :func:`selfkd.engine.evaluation.rebuild_eval_model`). Either way the file reproduces the logits
the run reported.
"""
from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .atomic import AGAIN, atomic_write
from .errors import CheckpointError, first_line, short


def weights_bytes(module: torch.nn.Module, metadata: dict) -> bytes:
    """``module``'s state as a safetensors file, with ``metadata`` (JSON values) in the header."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()})


def save_weights(path: Path, module: torch.nn.Module, metadata: dict, then: str = AGAIN) -> None:
    """:func:`weights_bytes` written atomically to ``path``; ``then``: what to do if the write fails."""
    data = weights_bytes(module, metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), then)


@dataclass
class WeightsMeta:
    """What a run's ``model.safetensors`` records besides its tensors: what rebuilds the module (model, method and
    their options; ``inference``: the plain backbone or the whole method), how to feed it (image size, mean, std,
    class names), and how the run evaluated it (dataset options, eval size, test resize, precision), which
    ``selfkd eval --weights`` repeats."""

    model: str
    num_classes: int
    in_channels: int
    model_options: dict
    method: str
    method_options: dict
    task: str
    selfkd_version: str
    image_size: int
    mean: list
    std: list
    classes: list
    dataset: str
    data_options: dict
    eval_size: int | None
    test_resize: int | None
    amp: str
    inference: str = "backbone"  # set by save_eval_model

    def to_dict(self) -> dict:
        return asdict(self)


def save_eval_model(path: Path, method, metadata: dict, then: str = AGAIN) -> None:
    """The module ``method`` evaluates with (:meth:`~selfkd.methods.Method.eval_model`), with ``metadata`` (a
    :class:`WeightsMeta` as a dict) marked as a plain backbone or a whole method."""
    module = method.eval_model()
    inference = "backbone" if module is method.backbone else "method"
    save_weights(path, module, {**metadata, "inference": inference}, then)


def read_metadata(path: Path) -> dict:
    """The metadata of a safetensors file written by :func:`save_weights`, checked (its tensors are not read)."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No weights file at {path}.")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = {k: _json(v) for k, v in (fh.metadata() or {}).items()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}).") from None
    wrong = [f"'{key}' is {short(meta[key])}" for key, kind in METADATA.items() if key in meta and meta[key] is not None
             and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)
                  or (key in POSITIVE and meta[key] < 1) or (key in CHOICES and meta[key] not in CHOICES[key]))]
    if wrong:
        raise CheckpointError(f"{path} has metadata selfkd does not write ({'; '.join(wrong)[:300]}): the file was "
                              "damaged or edited. Use the model.safetensors of a selfkd run.")
    return meta


def load_weights(path: Path) -> tuple[dict, dict]:
    """(state_dict, metadata) from a safetensors file written by :func:`save_weights`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}).") from None


def _json_kind(hint) -> type:
    return next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))


# The metadata selfkd writes and its JSON types (a file of another program, or of an older selfkd, may lack some).
METADATA = {name: _json_kind(hint) for name, hint in typing.get_type_hints(WeightsMeta).items()}
POSITIVE = ("num_classes", "in_channels", "image_size", "eval_size", "test_resize")
CHOICES = {"inference": ("backbone", "method"), "amp": ("bf16", "fp16", "off")}


def _json(text: str):
    """A metadata value: JSON as selfkd writes it; another program's plain text is kept as it is."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def load_state(path: Path, module: torch.nn.Module, state: dict, what: str) -> None:
    """Load ``state`` (read from ``path``) into ``module``, or refuse naming ``what`` it does not fit."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit {what} ({first_line(err)}).") from None
