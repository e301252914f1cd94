"""Fixtures recorded from official code: the rules both sides apply, and the comparison.

A fixture is a small JSON file recorded by running a method's official code (``record_*.py`` beside this file)
and compared with selfkd's run of the same method (``side_*.py`` beside this file, see :func:`selfkd_side`) by
``tests/test_fidelity_*.py``; ``report.py`` prints the README's table from all fixtures. Nothing large is stored:
both sides make the same weights and inputs from the rules below (``recording.py`` holds the recorders' helpers).

- **Weights** (:func:`draw`): every floating tensor of the official model's ``state_dict``, in its order, takes
  ``numel`` draws of one seeded float64 generator, scaled by the tensor's role (see :func:`_scaled`). The fixture
  lists the official names and shapes in that order; the test maps each official name to selfkd's (a rename rule
  per method) and copies the values in (:func:`load_into`), so neither side stores weights.
- **Inputs** (:func:`images`, :func:`labels`, :func:`masks`): from their own seeded generators.
- **What is compared**: each named loss term and the total loss, and for every official parameter its gradient's
  norm and four fixed entries (first, one third, two thirds, last of the flattened tensor); for methods that keep
  state across steps, the same after each of several SGD steps (a trajectory).
- **Differences** (:func:`differences`): a loss term relative to its own size; a gradient's norm relative to the
  norm and to the whole gradient's norm, an entry relative to the tensor's RMS (single entries may be ~0). The test
  states its tolerance per fixture, with the reason; :func:`tolerances` derives float32's from the official float32
  run's own distance from float64 (a float32 fixture records it as ``exact_steps``).
"""
from __future__ import annotations

import contextlib
import importlib
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


def draw(specs: Iterable[tuple[str, Iterable[int]]], seed: int,
         positive: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """float64 values for each ``(name, shape)`` in order, from one generator seeded ``seed``. Tensors whose name
    contains one of ``positive`` take 1 ± 0.5 instead of their role's scale (e.g. fusion weights, which a ReLU
    would zero where negative); a fixture that uses it stores the list under ``"positive"``."""
    gen = torch.Generator().manual_seed(seed)
    positive = tuple(positive)
    out = {}
    for name, shape in specs:
        shape = tuple(shape)
        u = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        out[name] = 1.0 + 0.5 * u if any(p in name for p in positive) else _scaled(name, shape, u)
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


ZERO = 1e-10  # a recorded gradient this small relative to the whole gradient is zero by structure (differences)


def differences(recorded: Mapping, actual: Mapping, skip: Iterable[str] = ()) -> dict[str, float]:
    """The largest relative difference of each kind between two :func:`step_record` s (``losses``, ``loss``,
    ``grad_norm``, ``grad_entries``, and ``grad_whole``: a tensor's gradient norm relative to the norm of the whole
    gradient, all tensors together); a gradient present on one side only is an infinite difference. Gradients
    named in ``skip`` (official tensors without a selfkd counterpart) are left out. A recorded gradient under
    :data:`ZERO` of the whole gradient's norm is zero by structure (e.g. the bias of a BN whose output only feeds a
    1×1 conv and another BN, which removes it) and rounding noise on both sides: it counts in ``grad_whole`` only."""
    skip = set(skip)

    def rel(a: float, b: float, scale: float) -> float:
        return abs(a - b) / max(scale, 1e-300) if a != b else 0.0

    whole = math.sqrt(sum(g["norm"] ** 2 for k, g in recorded["grads"].items() if g is not None and k not in skip))
    out = {"losses": 0.0, "loss": rel(actual["loss"], recorded["loss"], abs(recorded["loss"])),
           "grad_norm": 0.0, "grad_entries": 0.0, "grad_whole": 0.0}
    if set(actual["losses"]) != set(recorded["losses"]):
        raise AssertionError(f"loss terms differ: {sorted(actual['losses'])} vs {sorted(recorded['losses'])}")
    for k, b in recorded["losses"].items():
        out["losses"] = max(out["losses"], rel(actual["losses"][k], b, abs(b)))
    for k, b in recorded["grads"].items():
        if k in skip:
            continue
        a = actual["grads"].get(k)
        if (a is None) != (b is None):
            return {**out, "grad_norm": math.inf, "grad_entries": math.inf, "grad_whole": math.inf}
        if b is None:
            continue
        out["grad_whole"] = max(out["grad_whole"], rel(a["norm"], b["norm"], whole))
        if b["norm"] <= ZERO * whole:
            continue
        rms = b["norm"] / math.sqrt(b["numel"])
        out["grad_norm"] = max(out["grad_norm"], rel(a["norm"], b["norm"], b["norm"]))
        for x, y in zip(a.get("entries", ()), b.get("entries", ())):  # float32 fixtures keep norms only
            out["grad_entries"] = max(out["grad_entries"], rel(x, y, rms))
    return out


def save(name: str, fixture: dict) -> Path:
    FIXTURES.mkdir(exist_ok=True)
    path = FIXTURES / f"{name}.json"
    path.write_text(json.dumps(fixture, indent=1, sort_keys=False) + "\n")
    return path


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


# --------------------------------------------------------------------------- the selfkd side of each fixture
# A fixture names the function that runs selfkd on its inputs (``"selfkd_side"``, e.g. ``"frskd.classification"``);
# that function lives in ``side_<first part>.py`` beside this file, registered with :func:`selfkd_side`, and
# returns one :func:`step_record` per recorded step. The tests and ``report.py`` both go through
# :func:`selfkd_steps`, so a new reference's fixtures are compared and reported once its side module exists.

SIDES: dict[str, Callable[[dict], list[dict]]] = {}
RENAMES: dict[str, Callable[[str], str | None]] = {}


def selfkd_side(name: str, rename: Callable[[str], str | None] | None = None):
    """Register the function that runs selfkd on the fixtures whose ``selfkd_side`` is ``name``; ``rename`` (official
    name -> selfkd name or None) tells :func:`without_counterpart` which official tensors selfkd leaves out."""
    def register(run: Callable[[dict], list[dict]]):
        SIDES[name] = run
        if rename is not None:
            RENAMES[name] = rename
        return run

    return register


def _side(fixture: Mapping) -> str:
    name = fixture["selfkd_side"]
    if name not in SIDES:
        importlib.import_module(f"{__package__}.side_{name.split('.')[0]}")
    return name


def selfkd_steps(fixture: Mapping) -> list[dict]:
    """selfkd's step records on ``fixture``'s inputs (imports ``side_<name>.py`` on first use)."""
    return SIDES[_side(fixture)](fixture)


def without_counterpart(fixture: Mapping) -> list[str]:
    """The official parameters of ``fixture`` that selfkd leaves out (its side's ``rename`` gives None)."""
    rename = RENAMES.get(_side(fixture))
    return [] if rename is None else [name for name in fixture["steps"][0]["grads"] if rename(name) is None]


def fixture_names(pattern: str = "*") -> list[str]:
    """Names (for :func:`load`) of the fixtures matching ``pattern``, sorted."""
    return sorted(path.stem for path in FIXTURES.glob(f"{pattern}.json"))


def largest_differences(fixture: Mapping, steps: list[dict], skip: Iterable[str] = ()) -> dict[str, float]:
    """:func:`differences` over every step of ``fixture`` against selfkd's ``steps``: the largest of each kind."""
    return _largest(fixture["steps"], steps, skip)


def _largest(recorded: list[Mapping], actual: list[Mapping], skip: Iterable[str] = ()) -> dict[str, float]:
    if len(actual) != len(recorded):
        raise AssertionError(f"{len(actual)} selfkd steps for {len(recorded)} recorded")
    worst: dict[str, float] = {}
    for r, a in zip(recorded, actual):
        for kind, value in differences(r, a, skip).items():
            worst[kind] = max(worst.get(kind, 0.0), value)
    return worst


def tolerances(fixture: Mapping, float64: float, float32_factor: float) -> dict[str, float]:
    """The largest relative difference allowed of each kind (:func:`differences`). float64: ``float64`` for all.
    float32: ``float32_factor`` times the official float32 run's own largest distance from the float64 run of the
    same steps (``exact_steps``; at least float32's epsilon), for the loss terms, the total and ``grad_whole``: two
    correct float32 implementations differ by rounding of that size. A gradient's own norm and entries are not
    compared in float32: one that is a large sum which nearly cancels (a stem BN's, a fusion weight's) moves by
    whole percents of itself between kernel choices; the float64 comparison is the exact one."""
    kinds = ("losses", "loss", "grad_norm", "grad_entries", "grad_whole")
    if fixture["dtype"] == "float64":
        return dict.fromkeys(kinds, float64)
    noise = _largest(fixture["exact_steps"], fixture["steps"])
    return {kind: float32_factor * max(noise[kind], 2.0**-23) if kind in ("losses", "loss", "grad_whole") else math.inf
            for kind in kinds}


def compare(fixture: Mapping) -> dict[str, float]:
    """Run selfkd on ``fixture``'s inputs on one CPU thread (the recorders' setting; two threads on a busy two-core
    machine made float64 steps 15 times slower): the largest relative difference of each kind over its steps
    (official tensors selfkd leaves out are not compared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return largest_differences(fixture, selfkd_steps(fixture), without_counterpart(fixture))
    finally:
        torch.set_num_threads(threads)


def check(fixture: Mapping, float64: float, float32_factor: float) -> dict[str, float]:
    """Assert selfkd matches ``fixture`` within :func:`tolerances`; returns the largest differences."""
    worst = compare(fixture)
    limits = tolerances(fixture, float64, float32_factor)
    over = {kind: (worst[kind], limits[kind]) for kind in limits if not worst[kind] <= limits[kind]}
    assert not over, f"{fixture['name']}: relative differences over the tolerance (found, allowed): {over}"
    return worst


def masks(seed: int, shape: Iterable[int], num_classes: int, ignore: int = 255) -> torch.Tensor:
    """Segmentation targets ``(B, H, W)``: seeded labels, with every 7th pixel (flattened order) ``ignore``."""
    shape = tuple(shape)
    out = labels(seed, math.prod(shape), num_classes)
    out[::7] = ignore
    return out.view(shape)


def batch(fixture: Mapping, entry: Mapping, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and targets of one of ``fixture["batches"]``: class labels, or masks if the fixture's
    ``shapes`` has ``"masks"``."""
    shapes = fixture["shapes"]
    x = images(entry["images_seed"], shapes["images"], dtype)
    if "masks" in shapes:
        return x, masks(entry["labels_seed"], shapes["masks"], shapes["num_classes"])
    return x, labels(entry["labels_seed"], shapes["images"][0], shapes["num_classes"])


def train_steps(fixture: Mapping, method: torch.nn.Module, params: Mapping[str, torch.nn.Parameter],
                inputs: Callable[[Mapping, Mapping, torch.dtype], tuple] = batch,
                step_context: Callable[[Mapping], contextlib.AbstractContextManager] | None = None) -> list[dict]:
    """Run ``method`` (a selfkd method, its weights loaded) through ``fixture``'s batches as the official loop
    does: ``on_epoch_start`` when a batch opens a new epoch, ``loss.backward()``, the step record (gradients of
    ``params``, keyed by official name), then gradient clipping by value (``"clip_value"``) and the SGD step of
    ``"optimizer"`` (if any). ``inputs(fixture, batch, dtype)`` gives the method's arguments (default
    :func:`batch`; e.g. images, targets and dataset indices); each forward runs inside ``step_context(recorded
    step)`` if given (e.g. to give selfkd the official random draws). Returns the step records."""
    dtype = getattr(torch, fixture["dtype"])
    settings = fixture.get("optimizer")
    optimizer = None if settings is None else torch.optim.SGD(
        method.parameters(), lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"])
    method.train()
    records, epoch = [], None
    for entry in fixture["batches"]:
        if entry["epoch"] != epoch:
            epoch = entry["epoch"]
            method.on_epoch_start(epoch, fixture["epochs"])
        arguments = inputs(fixture, entry, dtype)
        with step_context(fixture["steps"][len(records)]) if step_context else contextlib.nullcontext():
            out = method(*arguments)
        method.zero_grad()
        out.loss.backward()
        records.append(step_record({k: v.detach() for k, v in out.losses.items()}, out.loss.detach(),
                                   {name: p.grad for name, p in params.items()}))
        if fixture.get("clip_value"):
            torch.nn.utils.clip_grad_value_(method.parameters(), fixture["clip_value"])
        if optimizer is not None:
            optimizer.step()
    return records


def loaded(fixture: Mapping, method: torch.nn.Module, rename: Callable[[str], str | None],
           unmatched_ok: Iterable[str] = ()) -> dict[str, torch.nn.Parameter]:
    """Put ``method`` in the fixture's dtype with the fixture's weights (official names mapped by ``rename``);
    returns ``{official name: selfkd parameter}`` for the recorded gradients that have a counterpart."""
    method.to(getattr(torch, fixture["dtype"]))
    values = draw(fixture["official_tensors"], fixture["weight_seed"], fixture.get("positive", ()))
    load_into(method, values, rename, unmatched_ok)
    params = dict(method.named_parameters())
    return {name: params[rename(name)] for name in fixture["steps"][0]["grads"] if rename(name) is not None}
