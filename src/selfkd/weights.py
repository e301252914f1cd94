"""Inference weights as safetensors (no pickle): the module a run evaluated, with what rebuilds it in the metadata.

A run writes :meth:`Method.eval_model` — usually the plain backbone (``inference: backbone``), or the whole method
when it predicts with more (e.g. ONE's ensemble, BYOT's exits; ``inference: method``, rebuilt from the method's
name and options). Either way the file reproduces the logits the run reported.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from .atomic import AGAIN, atomic_write
from .errors import CheckpointError, ConfigError, SelfKDError, first_line


def weights_bytes(module: torch.nn.Module, metadata: dict) -> bytes:
    """``module``'s state as a safetensors file, with ``metadata`` (JSON values) in the header."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()})


def save_weights(path: Path, module: torch.nn.Module, metadata: dict, then: str = AGAIN) -> None:
    """:func:`weights_bytes` written atomically to ``path``; ``then``: what to do if the write fails."""
    data = weights_bytes(module, metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), then)


def save_eval_model(path: Path, method, metadata: dict, then: str = AGAIN) -> None:
    """The module ``method`` evaluates with (:meth:`~selfkd.methods.Method.eval_model`), marked in the metadata
    as a plain backbone or a whole method."""
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
    wrong = [f"'{key}' is {meta[key]!r}" for key, kind in METADATA.items() if key in meta and meta[key] is not None
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


# The metadata selfkd writes and its types (written as JSON values; a file of another program may lack them). The
# evaluation's preprocessing (dataset options, image_size, mean, std, eval_size, test_resize) and precision (amp,
# resolved) let `selfkd eval --weights` evaluate the file as the run did.
METADATA = {"model": str, "num_classes": int, "in_channels": int, "model_options": dict, "method": str,
            "method_options": dict, "task": str, "image_size": int, "mean": list, "std": list, "classes": list,
            "inference": str, "dataset": str, "data_options": dict, "eval_size": int, "test_resize": int, "amp": str}
POSITIVE = ("num_classes", "in_channels", "image_size", "eval_size", "test_resize")
CHOICES = {"inference": ("backbone", "method"), "amp": ("bf16", "fp16", "off")}


def _json(text: str):
    """A metadata value: JSON as selfkd writes it; another program's plain text is kept as it is."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fill(path: Path, module: torch.nn.Module, state: dict, what: str, error: type = CheckpointError) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise error(f"{path} does not fit {what} ({first_line(err)}).") from None


def load_backbone(path: Path, like: torch.nn.Module) -> tuple[torch.nn.Module, dict]:
    """``(backbone, metadata)``: a copy of the backbone ``like`` holding the weights of ``path``, a plain backbone
    written by selfkd for the same model and class count (e.g. a teacher of a student's own architecture). A file
    of another model, class count or model options, or of a whole method, is a :class:`ConfigError`."""
    state, meta = load_weights(path)
    if "model" not in meta or "num_classes" not in meta:
        raise CheckpointError(f"{path} was not written by selfkd (its metadata does not name the model and class "
                              "count); give the model.safetensors of a selfkd run.")
    if meta.get("inference", "backbone") != "backbone":
        raise ConfigError(f"{path} holds a whole '{meta.get('method')}' method (its run evaluated more than the "
                          "backbone), not a plain backbone; give the weights of a run that evaluates its backbone "
                          "(e.g. plain CE).")
    if (meta["model"], meta["num_classes"]) != (like.name, like.num_classes):
        raise ConfigError(f"{path} holds a {meta['model']} with {meta['num_classes']} classes, but a {like.name} with "
                          f"{like.num_classes} classes is needed; give the weights of a run of that model and class "
                          "count.")
    net = copy.deepcopy(like)
    _fill(path, net, state, f"{like.name} with these model options (use the options of the run that wrote it)",
          ConfigError)
    return net, meta


def load_eval_model(path: Path, model: str | None = None, num_classes: int | None = None,
                    in_channels: int | None = None) -> tuple[torch.nn.Module, dict]:
    """``(module, metadata)``: the module a run evaluated, rebuilt from a weights file written by selfkd and in
    eval mode; ``module(images)`` returns the logits (a backbone returns ``(logits, features)``)."""
    from .methods import create_method, data_args

    state, meta = load_weights(path)
    net, spec = _model(path, meta, model, num_classes, in_channels)
    what = f"model '{spec['model']}' with {spec['num_classes']} classes"
    if meta.get("inference", "backbone") != "backbone":  # the whole method
        name, options = meta.get("method"), meta.get("method_options", {})
        try:
            net = create_method(name, net, **options, **data_args(name, 1, getattr(net, "task", "classification")))
        except SelfKDError as err:
            raise CheckpointError(f"{path} names method '{name}' with options {options}, which cannot be rebuilt: "
                                  f"{err}") from None
        what = f"method '{name}' on {what}"
    _fill(path, net, state, what)
    return net.eval(), {**meta, **spec}


def _model(path: Path, meta: dict, model: str | None, num_classes: int | None, in_channels: int | None):
    from .models import create_model

    spec = {"model": model or meta.get("model"), "num_classes": num_classes or meta.get("num_classes"),
            "in_channels": in_channels or meta.get("in_channels")}
    missing = [key for key, value in spec.items() if value is None]
    if missing:
        raise CheckpointError(f"{path} lacks the metadata {', '.join(missing)} that selfkd writes; use the "
                              "model.safetensors of a selfkd run (or name the model with --model).")
    return create_model(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                        **meta.get("model_options", {})), spec
