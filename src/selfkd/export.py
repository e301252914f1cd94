"""``selfkd export RUN_DIR --format safetensors|torchscript|onnx``: the module the run evaluated, checked.

That module (the backbone, or the whole method for methods that predict with more) is rebuilt from
``model.safetensors`` (its metadata names the model, class count, input channels, model and method
options), wrapped so it returns the logits only, and written in the chosen format
to a temporary file (:func:`~selfkd.atomic.atomic_write`). That file is loaded back and run on a batch next to the
original; only when the largest absolute difference of the logits is within tolerance is it moved to its final name,
so a file that does not reproduce the model is never left behind. Every failure is one paragraph: a failed write
(:class:`~selfkd.errors.TrainingError`), a format the model cannot be exported to or a file that does not reproduce it
(:class:`ExportMismatch`).
"""
from __future__ import annotations

import importlib.util
import io
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write, make_parent
from .engine.evaluation import rebuild_eval_model
from .errors import CheckpointError, ConfigError, SelfKDError, first_line
from .memory import check_fits, forward_bytes
from .runfolder import EXPORT, EXPORT_FORMATS, WEIGHTS, marked_folder
from .weights import weights_bytes

ONNX_PACKAGES = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}  # module -> pip name
TOLERANCE = 1e-4  # of the largest logit magnitude (at least 1)


class ExportMismatch(SelfKDError):
    """The export failed, or its file does not reproduce the model's outputs."""

    exit_code = 3


class LogitsOnly(nn.Module):
    """An eval model that returns its logits alone (backbones return ``(logits, features)``, methods logits)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.module(images)
        return out[0] if isinstance(out, tuple) else out


def weights_file(source: Path) -> Path:
    path = source / WEIGHTS if source.is_dir() else source
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: `selfkd export` needs a finished run folder (it holds "
                              "model.safetensors, written at the end of training) or a model.safetensors file.")
    return path


def rebuild(weights: Path) -> tuple[nn.Module, dict]:
    """``(LogitsOnly(eval model) in eval mode on the CPU, metadata)`` from a weights file written by selfkd."""
    module, meta = rebuild_eval_model(weights)
    return LogitsOnly(module).eval(), meta


def input_size(meta: dict, given: int | None) -> int:
    """The check's image size: --image-size, else the size the model was trained at (weights metadata),
    else 32 (weights written before selfkd recorded it)."""
    return given or int(meta.get("image_size") or 32)


def require_onnx() -> None:
    missing = [pip for module, pip in ONNX_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"ONNX export needs the optional packages {', '.join(missing)}, which are not installed. Install them "
            f"with `pip install {' '.join(ONNX_PACKAGES.values())}` (onnx and onnxscript write the file, onnxruntime "
            "checks it), or export with --format torchscript or safetensors."
        )


# Each format: write(model, meta, example, path) and load(path, meta) -> a function images -> logits.

def _write_safetensors(model, meta, example, path):
    path.write_bytes(weights_bytes(model.module, meta))


def _load_safetensors(path, meta):
    reloaded, _ = rebuild(path)
    return reloaded


def _write_torchscript(model, meta, example, path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is deprecated", category=FutureWarning)
        # trace's own check re-traces and compares graphs (slow); the numerical check below replaces it
        buffer = io.BytesIO()  # in memory: writing to a full disk, torch.jit.save aborts the process
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)
    path.write_bytes(buffer.getvalue())


def _load_torchscript(path, meta):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is deprecated", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def _write_onnx(model, meta, example, path):
    torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), external_data=False, dynamo=True)


def _load_onnx(path, meta):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


WRITERS = {"safetensors": (_write_safetensors, _load_safetensors),
           "torchscript": (_write_torchscript, _load_torchscript),
           "onnx": (_write_onnx, _load_onnx)}


def max_abs_diff(reference: nn.Module, exported, images: torch.Tensor) -> tuple[float, float]:
    """``(max |exported − reference|, tolerance)`` of the logits on ``images``."""
    with torch.no_grad():
        want = reference(images)
        got = exported(images)
    if tuple(got.shape) != tuple(want.shape):
        raise ExportMismatch(f"The exported model returns shape {tuple(got.shape)}, the original {tuple(want.shape)}.")
    return float((got.float() - want.float()).abs().max()), TOLERANCE * max(1.0, float(want.abs().max()))


def export(source: str | Path, fmt: str, out: str | Path | None = None, image_size: int | None = None) -> dict:
    """Export and check; returns ``{"path", "format", "max_abs_diff", "tolerance", "input_shape", ...}``."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"Unknown export format '{fmt}'; choose one of {', '.join(EXPORT_FORMATS)}.")
    if fmt == "onnx":
        require_onnx()
    if image_size is not None and image_size < 1:
        raise ConfigError(f"--image-size {image_size}: give the side of the input images in pixels (a positive "
                          "number), or leave it out for the size the model was trained on.")
    weights = weights_file(Path(source))
    model, meta = rebuild(weights)
    out = output_path(weights, out, fmt)
    size = input_size(meta, image_size)
    check_fits(forward_bytes(5, meta["in_channels"], size), f"Exporting at --image-size {size} (a check batch of 5 "
               f"images of {meta['in_channels']}×{size}×{size} through the model)", "--image-size")
    example, check = _inputs(model, meta, size)
    make_parent(out, "--out")
    diff, tolerance = _write_checked(model, meta, fmt, weights, out, example, check)
    return {"path": str(out), "format": fmt, "model": meta["model"], "num_classes": meta["num_classes"],
            "input_shape": [None, meta["in_channels"], size, size], "max_abs_diff": diff, "tolerance": tolerance}


def output_path(weights: Path, out: str | Path | None, fmt: str) -> Path:
    """Where the export goes: ``--out`` (a file, or a folder to write ``model<ext>`` in), by default the run's
    ``export/`` folder. Never the weights file itself, and never inside another folder selfkd made (a run folder,
    a report...), whose files it would replace: only the run's own ``export/`` folder there."""
    own = weights.parent / EXPORT
    out = Path(out) if out else own
    if out == own or out.is_dir():  # a folder: the file goes in it under its usual name
        out = out / f"{weights.name.split('.')[0]}{EXPORT_FORMATS[fmt]}"
    if out.resolve() == weights.resolve():
        raise ConfigError(f"--out {out} is the weights file being exported; choose another path.")
    holder = marked_folder(out.parent)
    if holder is not None and (own.is_symlink() or out.parent.absolute() != own.absolute()):
        folder, kind = holder
        raise ConfigError(f"--out {out} is inside the {kind.noun} {folder}, which holds only the files selfkd writes "
                          f"there (it has {kind.marker}); an export could replace one of them. Choose a path outside "
                          f"it, or leave --out out to write {own / out.name}.")
    return out


def _inputs(model: nn.Module, meta: dict, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A tracing batch of 2 and a check batch of 5 (another batch size, so that one baked into the file shows
    up), refused when the model cannot run on them."""
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, meta["in_channels"], size, size, generator=gen)
    check = torch.randn(5, meta["in_channels"], size, size, generator=gen)
    try:
        with torch.no_grad():
            model(check)
    except (RuntimeError, ValueError, IndexError) as err:
        raise ConfigError(f"Model '{meta['model']}' cannot run on {meta['in_channels']}×{size}×{size} inputs "
                          f"({first_line(err, limit=200)}); pass --image-size with the size it was trained "
                          "on.") from None
    return example, check


def _write_checked(model, meta: dict, fmt: str, weights: Path, out: Path, example, check) -> tuple[float, float]:
    """Write the file through a temporary file, load it back and compare with ``model`` on ``check``; a file that
    fails is never renamed to ``out``. Returns ``(max abs difference, tolerance)``."""
    write, load = WRITERS[fmt]
    report = (f"Nothing was written to {out}. Report this with the model name ('{meta['model']}') and the "
              "selfkd/torch versions.")
    checked: dict = {}

    def write_checked(tmp: Path) -> None:
        try:
            with torch.no_grad():
                write(model, meta, example, tmp)
            checked["diff"], checked["tolerance"] = max_abs_diff(model, load(tmp, meta), check)
        except (OSError, SelfKDError):
            raise
        except Exception as err:  # tracing, ONNX conversion, or running the written file (e.g. a baked-in shape)
            raise ExportMismatch(f"The {fmt} export of {weights} failed ({_reason(err)}); the model may not support "
                                 f"this format, so try another --format. {report}") from None
        if not checked["diff"] <= checked["tolerance"]:
            raise ExportMismatch(
                f"The {fmt} export of {weights} does not reproduce the model: max abs difference of the logits "
                f"{checked['diff']:.3g} > tolerance {checked['tolerance']:.3g} on a batch of {tuple(check.shape)}. "
                f"{report}")

    atomic_write(out, write_checked, "Free some space, or pass --out with a writable place.")
    return checked["diff"], checked["tolerance"]


def _reason(err: Exception) -> str:
    """``Type: message`` of ``err``; for an error that quotes a traceback (TorchScript's interpreter, the ONNX
    exporter), the innermost error it ends with."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and re.match(r"^[\w.]+(Error|Exception): ", lines[-1]):
        return lines[-1][:300]
    return f"{type(err).__name__}: {(lines or [''])[0][:300]}"


