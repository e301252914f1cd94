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

from . import recording
from .harness import step_record
from .recording import RecordingSGD, commit_of, cpu_only


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
    """A training loop's batches, with the ``dataset`` its loop may read (its length, its ``classes``)."""

    def __init__(self, batches: Iterable, num_samples: int, num_classes: int = 0):
        super().__init__(batches)
        self.dataset = _Dataset(num_samples, num_classes)


class _Dataset:
    def __init__(self, num_samples: int, num_classes: int):
        self.num_samples, self.classes = num_samples, list(range(num_classes))

    def __len__(self) -> int:
        return self.num_samples


def records(optimizer: RecordingSGD, terms: Mapping[str, str | Callable[[dict], object]],
            total: str = "loss") -> list[dict]:
    """One :func:`harness.step_record` per step of ``optimizer`` (:func:`sgd`'s, which keeps the gradients and the
    locals of the loop that steps it): ``terms``
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


def fixture_base(case: str, method: str, compared: str, repository: str, checkout: Path, entry: str,
                 options: Mapping | None = None, **extra) -> dict:
    """What a case's float64 and float32 fixtures share (``recording.fixture`` adds the runs): ``side`` is
    ``selfkd_side``'s module, the reference's short name (``"authors"`` for the authors' repositories)."""
    options = dict(options or {})
    return {"case": case, "method": method, "task": "classification", "selfkd_side": extra.pop("side"),
            "compared": compared, "options_needed": ", ".join(f"{k}={v}" for k, v in options.items()) or "none",
            "reference": {"repository": repository, "commit": commit_of(checkout), "entry": entry},
            "options": options, **extra}


@contextlib.contextmanager
def official_run(checkout: Path, packages: Iterable[str], dtype: torch.dtype):
    """Everything an official run needs: its packages importable, ``.cuda()`` a no-op, the default dtype, quiet."""
    with default_dtype(dtype), cpu_only(), quiet(), on_path(checkout, packages):
        yield


def sgd(names: Mapping[str, torch.nn.Parameter], settings: Mapping | None, optimizer: Mapping) -> RecordingSGD:
    """The recording optimizer of one run: ``optimizer``'s SGD, with lr 0 where ``settings`` is None (the runs
    that keep the weights fixed, ``recording.dtype_runs``)."""
    return RecordingSGD(dict(names), lambda grads, frame: (grads, frame), lr=settings["lr"] if settings else 0.0,
                        momentum=optimizer["momentum"], weight_decay=optimizer["weight_decay"])


def recorder_main(doc: str, required: str, base: Callable[[Path], dict], run: Callable, optimizer: Mapping):
    """The ``main`` of a one-case recorder: ``--official CHECKOUT`` (which must hold ``required``), ``--out``;
    writes the float64 and float32 fixtures of ``run(checkout, dtype, settings)`` with ``base(checkout)``."""
    def main(argv=None) -> None:
        args = recording.arguments(doc.splitlines()[0], argv)
        recording.official_path(args.official, required)
        torch.set_num_threads(1)
        checkout = args.official.resolve()
        for run_ in recording.dtype_runs(lambda dtype, settings: run(checkout, dtype, settings), optimizer):
            recording.write(args.out, recording.fixture(base(checkout), run_))

    return main


def ce_kd_records(optimizer: RecordingSGD, weight: float, kd: str) -> list[dict]:
    """Step records of a loop whose total is ``CE + weight · <kd>`` added in place (so only the total and the
    unweighted KD term ``kd`` are locals): ``kd`` = weight · kd, ``ce`` = the total minus that."""
    return records(optimizer, {"ce": lambda local: local["loss"] - weight * local[kd],
                               "kd": lambda local: weight * local[kd]})


class NoProgress:
    """Stands in for a progress bar (``tqdm``, ``Bar``): a context manager whose every method does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def fixed_copy(path: Path, fixes: Mapping[str, str], folder: str) -> Path:
    """A copy of ``path`` in ``folder`` with each ``old`` text replaced by ``new``, for official code that current
    Python or PyTorch cannot run as written (each recorder names its fixes and why). Every ``old`` must occur."""
    text = path.read_text()
    for old, new in fixes.items():
        if old not in text:
            raise ValueError(f"{path}: {old!r} not found; is this the recorded commit?")
        text = text.replace(old, new)
    copy = Path(folder) / path.name
    copy.write_text(text)
    return copy
