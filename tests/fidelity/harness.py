"""Fixtures recorded from official code: the rules both sides apply, and the comparison.

A fixture is a small JSON file recorded by running a method's official code (``record_*.py`` beside this file)
and compared with selfkd's run of the same method by ``tests/test_fidelity.py``. Nothing large is stored: both
sides make the same weights and inputs from the rules below.

- **Weights** (:func:`draw`): every floating tensor of the official model's ``state_dict``, in its order, takes
  ``numel`` draws of one seeded float64 generator, scaled by the tensor's role (see :func:`_scaled`). The fixture
  lists the official names and shapes in that order; the test maps each official name to selfkd's (a rename rule
  per method) and copies the values in (:func:`load_into`), so neither side stores weights.
- **Inputs** (:func:`images`, :func:`labels`): from their own seeded generators.
- **What is compared**: each named loss term and the total loss, and for every official parameter its gradient's
  norm and four fixed entries (first, one third, two thirds, last of the flattened tensor); for methods that keep
  state across steps, the same after each of several SGD steps (a trajectory).
- **Differences** (:func:`differences`): a loss term relative to its own size; a gradient's norm relative to the
  norm, an entry relative to the tensor's RMS (single entries may be ~0). The test states its tolerance per
  fixture, with the reason.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"


def _scaled(name: str, shape: tuple[int, ...], u: torch.Tensor) -> torch.Tensor:
    """``u`` ~ U(-1, 1) (float64) -> values for a tensor called ``name``: weights of fan-in f get variance 1/f
    (activations keep their scale through deep stacks), norm scales 1 ± 0.1, biases and running means ±0.1,
    running variances in [0.5, 1.5]."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return 1.0 + 0.5 * u
    if leaf == "running_mean" or (len(shape) <= 1 and leaf != "weight"):
        return 0.1 * u
    if len(shape) <= 1:
        return 1.0 + 0.1 * u
    fan_in = math.prod(shape[1:])
    return u * math.sqrt(3.0 / fan_in)


def draw(specs: Iterable[tuple[str, Iterable[int]]], seed: int) -> dict[str, torch.Tensor]:
    """float64 values for each ``(name, shape)`` in order, from one generator seeded ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in specs:
        shape = tuple(shape)
        u = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        out[name] = _scaled(name, shape, u)
    return out


def floating_specs(module: torch.nn.Module) -> list[tuple[str, list[int]]]:
    """The floating tensors of ``module.state_dict()`` in order: what :func:`draw` fills (integer buffers such
    as ``num_batches_tracked`` are left as they are)."""
    return [(k, list(v.shape)) for k, v in module.state_dict().items() if v.is_floating_point()]


def fill_(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Fill ``module``'s floating state in its own order (the official side); returns the values."""
    values = draw(floating_specs(module), seed)
    load_into(module, values, lambda name: name)
    return values


def load_into(module: torch.nn.Module, values: Mapping[str, torch.Tensor], rename: Callable[[str], str | None],
              unmatched_ok: Iterable[str] = ()) -> None:
    """Copy official ``values`` into ``module`` under ``rename(official_name)`` (None: the official tensor has no
    selfkd counterpart and is skipped). Every floating tensor of ``module`` must be filled, except the names in
    ``unmatched_ok``; shapes must agree (a mapping mistake fails loudly, not silently)."""
    state = module.state_dict()
    filled = set()
    for name, value in values.items():
        target = rename(name)
        if target is None:
            continue
        if target not in state:
            raise KeyError(f"{name} -> {target}: no such tensor in {type(module).__name__}")
        if tuple(state[target].shape) != tuple(value.shape):
            raise ValueError(f"{name} -> {target}: shape {tuple(value.shape)} vs {tuple(state[target].shape)}")
        with torch.no_grad():
            state[target].copy_(value.to(state[target].dtype))
        filled.add(target)
    left = [k for k, v in state.items() if v.is_floating_point() and k not in filled and k not in set(unmatched_ok)]
    if left:
        raise KeyError(f"not filled from the official values: {left[:5]}{' ...' if len(left) > 5 else ''}")


def images(seed: int, shape: Iterable[int], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard-normal images (already normalised, as a loader would give them)."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def labels(seed: int, n: int, num_classes: int) -> torch.Tensor:
    return torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(seed))


def entries(t: torch.Tensor) -> list[float]:
    """Four fixed entries of the flattened tensor: first, one third, two thirds, last."""
    flat = t.detach().reshape(-1).double()
    n = flat.numel()
    return [flat[i].item() for i in (0, n // 3, 2 * n // 3, n - 1)]


def step_record(losses: Mapping[str, torch.Tensor | float], loss: torch.Tensor | float,
                grads: Mapping[str, torch.Tensor | None]) -> dict:
    """One step as a fixture stores it: loss terms, total, and per-parameter gradient norm and entries (a
    parameter without a gradient is recorded as null)."""
    return {"losses": {k: float(v) for k, v in losses.items()}, "loss": float(loss),
            "grads": {k: None if g is None else {"norm": g.double().norm().item(), "numel": g.numel(),
                                                 "entries": entries(g)}
                      for k, g in grads.items()}}


def differences(recorded: Mapping, actual: Mapping) -> dict[str, float]:
    """The largest relative difference of each kind between two :func:`step_record` s (``losses``, ``loss``,
    ``grad_norm``, ``grad_entries``); a gradient present on one side only is an infinite difference."""
    def rel(a: float, b: float, scale: float) -> float:
        return abs(a - b) / max(scale, 1e-300) if a != b else 0.0

    out = {"losses": 0.0, "loss": rel(actual["loss"], recorded["loss"], abs(recorded["loss"])),
           "grad_norm": 0.0, "grad_entries": 0.0}
    if set(actual["losses"]) != set(recorded["losses"]):
        raise AssertionError(f"loss terms differ: {sorted(actual['losses'])} vs {sorted(recorded['losses'])}")
    for k, b in recorded["losses"].items():
        out["losses"] = max(out["losses"], rel(actual["losses"][k], b, abs(b)))
    for k, b in recorded["grads"].items():
        a = actual["grads"].get(k)
        if (a is None) != (b is None):
            return {**out, "grad_norm": math.inf, "grad_entries": math.inf}
        if b is None:
            continue
        rms = b["norm"] / math.sqrt(b["numel"])
        out["grad_norm"] = max(out["grad_norm"], rel(a["norm"], b["norm"], b["norm"]))
        for x, y in zip(a["entries"], b["entries"]):
            out["grad_entries"] = max(out["grad_entries"], rel(x, y, rms))
    return out


def save(name: str, fixture: dict) -> Path:
    FIXTURES.mkdir(exist_ok=True)
    path = FIXTURES / f"{name}.json"
    path.write_text(json.dumps(fixture, indent=1, sort_keys=False) + "\n")
    return path


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())
