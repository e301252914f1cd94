"""Helpers for the recorders (``record_*.py``): run official code on the CPU, unmodified, and read what it computes.

Nothing here imports selfkd: a recorder runs the official code alone (in an environment that has what that code
needs) and writes a fixture; the tests run selfkd on the same inputs.

- :func:`cpu_only`: ``.cuda()`` of tensors and modules returns them unchanged, for code that calls it.
- :func:`official_functions`: the named top-level functions of an official script, without running the script
  (official ``main.py`` files parse arguments and read datasets at import).
- :class:`LocalsAtReturn`: the local variables of an official function at each return (loss terms the function
  computes but does not return).
- :class:`RecordingSGD`: ``torch.optim.SGD`` that, on every ``step()``, records the gradients of every parameter
  under its official name and what the recorder reads from the local variables of the code that called it.
"""
from __future__ import annotations

import ast
import contextlib
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .harness import floating_specs


@contextlib.contextmanager
def cpu_only():
    """``Tensor.cuda()`` and ``Module.cuda()`` return their object unchanged (official code calls them)."""
    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved


def official_functions(path: Path, names: Iterable[str], namespace: dict) -> dict:
    """Execute only the top-level ``def`` s and ``class`` es called ``names`` of the script at ``path`` in
    ``namespace`` (which supplies the script's globals: imports, parsed arguments, ...); returns ``namespace``."""
    tree = ast.parse(path.read_text(), str(path))
    wanted = set(names)
    defs = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in wanted]
    missing = wanted - {node.name for node in defs}
    if missing:
        raise KeyError(f"{path} has no top-level function {sorted(missing)}")
    exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


class LocalsAtReturn(contextlib.AbstractContextManager):
    """While active, ``calls`` collects the locals of every call of ``function`` (a Python function) as it
    returns."""

    def __init__(self, function):
        self.code = function.__code__
        self.calls: list[dict] = []

    def _profile(self, frame, event, arg):
        if event == "return" and frame.f_code is self.code:
            self.calls.append(dict(frame.f_locals))

    def __enter__(self):
        self._saved = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(self._saved)
        return False


class Draws(contextlib.AbstractContextManager):
    """While active, records in ``calls`` what the random draws official code makes return, in call order:
    ``numpy.random.beta``, ``numpy.random.randint`` and ``torch.randperm`` (for mixing the batch)."""

    def __init__(self):
        import numpy

        self.targets = [(numpy.random, "beta"), (numpy.random, "randint"), (torch, "randperm")]
        self.calls: list[tuple[str, object]] = []

    def _recorded(self, name: str, draw):
        def call(*args, **kwargs):
            value = draw(*args, **kwargs)
            self.calls.append((name, value.tolist() if isinstance(value, torch.Tensor) else value))
            return value

        return call

    def __enter__(self):
        self.saved = [getattr(module, name) for module, name in self.targets]
        for (module, name), draw in zip(self.targets, self.saved):
            setattr(module, name, self._recorded(name, draw))
        return self

    def __exit__(self, *exc):
        for (module, name), draw in zip(self.targets, self.saved):
            setattr(module, name, draw)
        return False

    def take(self) -> list[tuple[str, object]]:
        """The draws since the last call."""
        calls, self.calls = self.calls, []
        return calls


class RecordingSGD(torch.optim.SGD):
    """SGD that, at each ``step()`` and before stepping, appends ``record(grads, frame)`` to ``steps``: ``grads`` is
    ``{official name: gradient or None}`` (``names`` maps official names to parameters), ``frame`` the locals of the
    official code that called ``step()``. Terms computed from those locals there see the weights of this step.
    With ``at_step=False`` only :meth:`snapshot` records (official code that clips the gradients before stepping)."""

    def __init__(self, names: Mapping[str, torch.nn.Parameter], record, at_step: bool = True, **options):
        super().__init__(list(names.values()), **options)
        self.names, self.record, self.at_step = dict(names), record, at_step
        self.steps: list = []

    def step(self, closure=None):
        if self.at_step:
            self.snapshot(caller_locals())
        return super().step(closure)

    def snapshot(self, frame: dict) -> None:
        """Append ``record(grads, frame)`` with the gradients as they are now."""
        grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in self.names.items()}
        self.steps.append(self.record(grads, frame))


def caller_locals() -> dict:
    """The locals of the nearest calling frame outside torch and this file (optimizers wrap ``step``)."""
    frame = sys._getframe(1)
    while frame.f_code.co_filename == __file__ or f"{Path(torch.__file__).parent}" in frame.f_code.co_filename:
        frame = frame.f_back
    return dict(frame.f_locals)


def parameters_by_name(modules: Mapping[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
    """``{prefix.name: parameter}`` over ``modules`` in order (the official names of a fixture)."""
    return {f"{prefix}.{name}": p for prefix, module in modules.items() for name, p in module.named_parameters()}


def specs_of(modules: Mapping[str, torch.nn.Module]) -> list[tuple[str, list[int]]]:
    """The floating state of ``modules`` in order, names prefixed: what a fixture's weights fill."""
    return [(f"{prefix}.{name}", shape) for prefix, module in modules.items()
            for name, shape in floating_specs(module)]


def load_official(modules: Mapping[str, torch.nn.Module], values: Mapping[str, torch.Tensor]) -> None:
    """Copy drawn ``values`` (prefixed names) into the official ``modules``."""
    for prefix, module in modules.items():
        state = module.state_dict()
        with torch.no_grad():
            for name, tensor in state.items():
                if tensor.is_floating_point():
                    tensor.copy_(values[f"{prefix}.{name}"].to(tensor.dtype))


def commit_of(checkout: Path) -> str:
    """The commit of an official checkout (``git rev-parse HEAD``), with ``+dirty`` if its files were changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def official_path(checkout: Path, relative: str) -> Path:
    """``checkout/relative``, or a message naming what is missing (a wrong ``--official`` path)."""
    path = checkout / relative
    if not path.exists():
        raise SystemExit(f"{path} not found: --official must be a checkout of the reference repository")
    return path


def arguments(description: str, argv=None):
    """The recorders' command line: ``--official CHECKOUT`` (required) and ``--out FOLDER`` (the fixtures)."""
    import argparse

    from .harness import FIXTURES

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--official", required=True, type=Path, help="a checkout of the reference repository")
    parser.add_argument("--out", type=Path, default=FIXTURES, help=f"where the fixtures go (default {FIXTURES})")
    return parser.parse_args(argv)


def write(folder: Path, fixture: dict) -> Path:
    """Write ``fixture`` as ``folder/<name>.json``: one line per top-level key, lists one element a line."""
    import json

    def dumps(value) -> str:
        if isinstance(value, list) and value and isinstance(value[0], (dict, list, tuple)):
            return "[\n  " + ",\n  ".join(json.dumps(v, separators=(",", ":")) for v in value) + "\n ]"
        return json.dumps(value, separators=(",", ": "))

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fixture['name']}.json"
    path.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {dumps(v)}" for k, v in fixture.items()) + "\n}\n")
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB, {len(fixture['steps'])} steps)")
    return path


def dtype_runs(run, optimizer: dict) -> list[dict]:
    """The runs behind one case's two fixtures, from ``run(dtype, optimizer or None) -> (specs, records)``
    (records: ``[(batch, step record), ...]``):

    - float64 with SGD steps (``optimizer``): the trajectory, compared tightly;
    - float32 with the weights fixed (``None``: lr 0), and the same in float64 (``exact``): float32 rounding is
      compared without a trajectory that amplifies it, and ``exact`` measures how far the official float32 run
      itself is from exact, the scale of the float32 tolerance."""
    specs, trajectory = run(torch.float64, optimizer)
    _, rounded = run(torch.float32, None)
    _, exact = run(torch.float64, None)
    return [{"dtype": "float64", "optimizer": optimizer, "specs": specs, "records": trajectory},
            {"dtype": "float32", "optimizer": None, "specs": specs, "records": rounded, "exact": exact}]


def fixture(base: dict, run: dict, keep=lambda records: records) -> dict:
    """A fixture: ``base`` (case, method, reference, shapes, ...) and one of :func:`dtype_runs`, its records passed
    through ``keep`` (e.g. a subset of steps)."""
    records = [(b, compact(r, run["dtype"])) for b, r in keep(run["records"])]
    first = ("case", "method", "task", "selfkd_side", "reference", "compared", "options_needed")
    out = {"name": f"{base['case']}-{run['dtype']}", **{k: base[k] for k in first}, "dtype": run["dtype"],
           **{k: v for k, v in base.items() if k not in first}, "optimizer": run["optimizer"],
           "official_tensors": run["specs"], "batches": [b for b, _ in records], "steps": [r for _, r in records]}
    if "exact" in run:
        out["exact_steps"] = [compact(r, run["dtype"]) for _, r in keep(run["exact"])]
    return out


def compact(record: dict, dtype: str) -> dict:
    """A float32 fixture's step record as the comparison uses it: 9 significant digits (float32 has about 7) and no
    gradient entries (float32 gradients are compared by their norms only, see harness.tolerances)."""
    if dtype == "float64":
        return record

    def short(x: float) -> float:
        return float(f"{x:.9g}")

    return {**record, "losses": {k: short(v) for k, v in record["losses"].items()}, "loss": short(record["loss"]),
            "grads": {k: None if g is None else {"norm": short(g["norm"]), "numel": g["numel"]}
                      for k, g in record["grads"].items()}}
