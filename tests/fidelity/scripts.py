"""Driving an official training script's own functions (with :func:`recording.official_functions`): the
arguments its parser gives, the batches its training loop reads, the dtype it runs in, and a record of each step.

Nothing here imports selfkd.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from .harness import step_record
from .recording import RecordingSGD


def kept_lr(optimizer, *args, **kwargs) -> float:
    """Stands in for an official learning-rate schedule (``adjust_lr(optimizer, epoch, ...)``): the fixture's SGD
    settings hold, as on the selfkd side (the schedule is the training script's, not the method's)."""
    return optimizer.param_groups[0]["lr"]


def official_arguments(path: Path, argv: Iterable[str] = ()) -> argparse.Namespace:
    """Parse ``argv`` with the parser that the script at ``path`` builds at top level: only its
    ``parser = argparse.ArgumentParser(...)`` and ``parser.add_argument(...)`` statements are run, so every
    argument not in ``argv`` has the script's own default."""
    tree = ast.parse(path.read_text(), str(path))

    def builds_parser(node: ast.stmt) -> bool:
        if isinstance(node, ast.Assign):
            return any(isinstance(t, ast.Name) and t.id == "parser" for t in node.targets)
        call = node.value if isinstance(node, ast.Expr) else None
        return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
            isinstance(call.func.value, ast.Name) and call.func.value.id == "parser"

    namespace = {"argparse": argparse}
    body = [node for node in tree.body if builds_parser(node)]
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["parser"].parse_args(list(argv))


class Loader(list):
    """A training loop's batches, with the ``dataset`` its loop may read (only its length matters)."""

    def __init__(self, batches: Iterable, num_samples: int):
        super().__init__(batches)
        self.dataset = range(num_samples)


def records(optimizer: RecordingSGD, terms: Mapping[str, str | Callable[[dict], object]],
            total: str = "loss") -> list[dict]:
    """One :func:`harness.step_record` per step of ``optimizer`` (a :class:`recording.RecordingSGD`): ``terms``
    maps a fixture's term name to the local variable of the official training loop that holds it, or to a function
    of those locals; ``total`` is the variable it back-propagates."""
    def value(local: dict, source):
        return source(local) if callable(source) else local[source]

    return [step_record({name: value(local, src) for name, src in terms.items()}, local[total], grads)
            for grads, local in optimizer.steps]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Run official code in ``dtype``: tensors it creates without a dtype (``torch.tensor(0.)``, ``torch.eye``,
    ``torch.full``) take it."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@contextlib.contextmanager
def quiet():
    """Official training loops print every step; keep the recorder's output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def on_path(checkout: Path, packages: Iterable[str]):
    """Import the official ``packages`` (top-level names such as ``models``) from ``checkout``; forget them after,
    so another checkout's packages of the same names can be imported later in the same process."""
    sys.path.insert(0, str(checkout))
    try:
        yield
    finally:
        sys.path.remove(str(checkout))
        for name in list(sys.modules):
            if name.split(".")[0] in set(packages):
                del sys.modules[name]
