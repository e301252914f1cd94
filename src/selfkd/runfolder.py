"""The run folder: its layout, shared by the engine that writes it and the commands that read it (eval, compare,
sweep, export), and its life.

selfkd writes only into a folder it made or found empty, and marks it (:data:`MARKER`) when it starts writing. The
process that writes a run holds an exclusive lock on the marker (``flock``: the kernel releases it when the process
ends, however it ends; processes it forks, such as DataLoader workers, close their copy). ``--overwrite`` deletes
only the files selfkd writes (:data:`OUTPUTS`), only in a marked folder. Every check here reads; nothing is written
before :func:`open_run`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import write_failure
from .errors import ConfigError

CONFIG = "config.yaml"  # the config as given (auto values kept), written when the run starts and on each resume
METRICS = "metrics.jsonl"  # one row per epoch
METRICS_CSV = "metrics.csv"
TENSORBOARD = "tb"
CHECKPOINT = "last.pt"  # everything needed to resume
WEIGHTS = "model.safetensors"  # the module the run evaluated (weights.save_eval_model)
RELIABILITY = "reliability.json"  # per-bin statistics of the last evaluation
SUMMARY = "summary.json"  # written when the run finishes
EXAMPLES = "examples.npz"  # a segmentation run's test images, ground truth and predictions (engine/examples.py)
EXPORT = "export"  # selfkd export's default folder
EXPORT_FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}  # -> extension
EXPORTS = tuple(f"model{ext}" for ext in EXPORT_FORMATS.values())  # what selfkd export writes there for a run
MARKER = ".selfkd-run"  # made by selfkd; holds the PID of the process that last locked it
OUTPUTS = (CONFIG, METRICS, METRICS_CSV, TENSORBOARD, CHECKPOINT, WEIGHTS, RELIABILITY, SUMMARY, EXAMPLES, EXPORT)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows in epoch order; an epoch logged twice (after a resume) keeps its last row, and a
    line cut by a crash is skipped."""
    rows: dict = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows[row["epoch"]] = row
    return [rows[e] for e in sorted(rows)]


@dataclass
class RunSummary:
    """``summary.json``: what a finished run reports. The engine writes it, the report, the sweep, the tuner and a
    resume of a finished run read it. ``final`` holds the test metrics of the selected weights (``selected``: their
    epoch, ``by`` ``last`` or ``best_val``, and the validation metric that chose them; empty under ``train.eval_test:
    never``); ``best_on_test`` the best test epoch, labelled as selected on the test set (empty unless every epoch
    was tested). Files of selfkd before validation splits lack the last three fields."""

    selfkd_version: str
    task: str
    name: str
    method: str
    model: str
    dataset: str
    seed: int
    epochs: int
    final: dict
    best_on_test: dict
    train_time_s: float
    img_per_s: float | None
    params: int
    extra_params: int
    device: str
    world_size: int
    settings: dict  # the resolved amp, channels_last and compile
    classes: list  # the dataset's class names (segmentation: the names of final's iou_per_class)
    selected: dict | None = None  # {"epoch", "by", "metric", "value", "note"}: which weights final reports, and why
    train_images: int | None = None  # images trained on (the training set less the validation split, its subset)
    val_images: int | None = None  # images validated on (0: no validation split)

    def to_dict(self) -> dict:
        return asdict(self)


def _json_kind(hint) -> type | tuple[type, ...]:
    """The JSON type of a field annotated ``hint`` (a float may be written as an int; ``X | None``: X)."""
    kind = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
    return (int, float) if kind is float else kind


# The JSON types of summary.json's fields, for readers that check a file (old files may lack fields).
SUMMARY_TYPES = {name: _json_kind(hint) for name, hint in typing.get_type_hints(RunSummary).items()}


def summary_problems(summary) -> list[str]:
    """The fields of a summary.json's contents that selfkd does not write so (present, not null, wrong type)."""
    if not isinstance(summary, dict):
        return ["(not a mapping)"]
    return [key for key, kind in SUMMARY_TYPES.items() if summary.get(key) is not None
            and (not isinstance(summary[key], kind) or isinstance(summary[key], bool))]


def finished_summary(path: Path, method: str, model: str, dataset: str, epochs: int) -> dict | None:
    """The summary of the run in ``path`` when it is that run (method, model, dataset), trained at least ``epochs``
    epochs and saved nothing since (None otherwise: there is more to train, or it is another run)."""
    summary, checkpoint = path / SUMMARY, path / CHECKPOINT
    try:
        done = json.loads(summary.read_text())
        newer = not checkpoint.exists() or summary.stat().st_mtime_ns >= checkpoint.stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    same = isinstance(done, dict) and [done.get("method"), done.get("model"), done.get("dataset")] == [
        method, model, dataset]
    return done if same and newer and isinstance(done.get("epochs"), int) and done["epochs"] >= epochs else None


_HELD: set[int] = set()  # the run folder locks this process holds (open_run), released by release()


def _close_held_in_child() -> None:
    """In a forked child (a DataLoader worker): close the copies of the parent's locks, so that a lock lives exactly
    as long as the process that took it (closing a copy does not unlock the parent's)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def release(lock: int) -> None:
    """Release a run folder locked by :func:`open_run`."""
    _HELD.discard(lock)
    os.close(lock)


def _lock(fd: int, path: Path, shared: bool = False) -> None:
    """Lock the open marker ``fd`` of the run folder ``path`` (``shared``: only to check that no process holds it
    exclusively, so that several processes can check at once), or refuse naming the process that holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (os.read(fd, 200).decode(errors="replace").strip().splitlines() or ["pid unknown"])[-1]
        raise ConfigError(f"The run folder {path} is in use by another selfkd process ({holder}). Wait for it to "
                          "end, or stop it (Ctrl-C or SIGTERM: it saves a checkpoint), or choose another --run-dir.") \
            from None


def check_free(path: Path) -> None:
    """Refuse a run folder that another process holds (reads only: a shared lock is taken and given back at once, so
    the processes of one torchrun can check the same folder together)."""
    if path.is_dir() and (path / MARKER).is_file():
        fd = os.open(path / MARKER, os.O_RDONLY)
        try:
            _lock(fd, path, shared=True)
        finally:
            os.close(fd)


def _outputs(path: Path) -> list[str]:
    return [name for name in OUTPUTS if (path / name).exists() or (path / name).is_symlink()]


def check_new(path: Path, overwrite: bool, marked: bool | None = None) -> None:
    """Refuse a folder that a new run may not write in: a file, a non-empty folder selfkd did not make, or (without
    ``overwrite``) a run folder that already holds a run. ``marked``: whether selfkd made the folder (default: it
    holds the marker). Reads only."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"The run folder {path} cannot be made: {blocker} is a file. Choose another --run-dir "
                          "(or name).")
    if not path.is_dir():
        return
    entries = sorted(e.name for e in path.iterdir() if e.name != MARKER)
    if not entries:
        return
    shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
    if not ((path / MARKER).is_file() if marked is None else marked):
        older = (f" If it is the run folder of an older selfkd, continue it with `selfkd train --resume {path}`."
                 if (path / CONFIG).is_file() and (path / CHECKPOINT).is_file() else "")
        raise ConfigError(
            f"The run folder {path} is not empty ({shown}) and selfkd did not make it (it has no {MARKER}). selfkd "
            "writes only into folders it made or found empty, and --overwrite never deletes files selfkd did not "
            f"write. Choose another --run-dir (or name), or move those files away yourself.{older}")
    outputs = _outputs(path)
    if not outputs or overwrite:
        return
    if (path / CHECKPOINT).is_file():
        raise ConfigError(
            f"The run folder {path} already holds a run (its last checkpoint is {path / CHECKPOINT}). Continue it with "
            f"`selfkd train --resume {path}`, start it over with --overwrite (deletes the files selfkd wrote in it), "
            "or choose another --run-dir (or name).")
    raise ConfigError(
        f"The run folder {path} holds a run that stopped before its first checkpoint ({', '.join(outputs)}; no "
        f"{CHECKPOINT}), so there is nothing to resume. Start it over with --overwrite (deletes the files selfkd "
        "wrote in it), or choose another --run-dir (or name).")


def check_run(path: Path, flag: str) -> None:
    """Refuse ``path`` (given as ``flag``, e.g. ``--resume``) unless it is a run folder with a checkpoint.
    Reads only."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        what = ("does not exist" if not path.exists() else "is a file, not a folder" if not path.is_dir()
                else f"is not a selfkd run folder (it has no {CONFIG})")
        raise ConfigError(f"{flag} {path}: {path} {what}. {flag} takes a run folder made by `selfkd train` (it "
                          f"holds {CONFIG} and {CHECKPOINT}).")
    if not (path / CHECKPOINT).is_file():
        raise ConfigError(
            f"{flag} {path}: the run stopped before its first checkpoint (the folder has no {CHECKPOINT}), so there "
            f"is nothing to continue or evaluate. Start it over with "
            f"`selfkd train -c {path / CONFIG} --run-dir {path} --overwrite`.")


def next_step(path: Path) -> str:
    """What to run after a run in ``path`` stopped: resume from its checkpoint, or start over (none yet)."""
    if (path / CHECKPOINT).is_file():
        return f"Continue with `selfkd train --resume {path}`."
    if (path / CONFIG).is_file():
        return (f"No checkpoint was saved yet, so there is nothing to resume; start over with "
                f"`selfkd train -c {path / CONFIG} --run-dir {path} --overwrite`.")
    return "Nothing was saved; run the same command again."


def open_run(path: Path, resume: bool, overwrite: bool) -> int:
    """Create ``path`` if needed, mark and lock it for this process and check again under the lock; with
    ``overwrite`` (a new run) delete the files selfkd wrote in it. Returns the lock (a file descriptor: closing it,
    or the process ending, releases it: see :func:`release`). Refuses a folder another process holds, naming that
    process. What this call made (folders, the marker) is removed again when it fails."""
    made = [p for p in (path, *path.parents) if not p.exists()]  # the folders this call makes, deepest first
    fd, marked, mine = None, True, False  # marked: the folder held the marker before; mine: this call made it
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            fd, marked = os.open(path / MARKER, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), False
        except FileExistsError:
            fd = os.open(path / MARKER, os.O_RDWR)
        _lock(fd, path)
        mine = not marked  # and locked: no other process took it meanwhile
        if resume:
            check_run(path, "--resume")
        else:
            check_new(path, overwrite, marked)
        os.ftruncate(fd, 0)
        os.write(fd, f"selfkd run folder\npid {os.getpid()} on {socket.gethostname()}\n".encode())
        probe = path / f"{MARKER}.tmp"  # every write makes a temporary file first: can it?
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o666))
        probe.unlink()
        if overwrite and not resume:
            clear(path)
        _HELD.add(fd)
        return fd
    except BaseException as err:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            if mine:
                (path / MARKER).unlink()
            for folder in made:
                folder.rmdir()
        if isinstance(err, OSError):
            raise ConfigError(f"Cannot write in the run folder {path}: {write_failure(err, path)}. Free some space or "
                              "make it writable, or choose another --run-dir; then run the command again.") from None
        raise


def clear(path: Path) -> None:
    """Delete the files selfkd writes in the run folder ``path`` (a link is deleted, never what it points to);
    other files stay."""
    def remove(p: Path) -> None:
        if p.is_symlink() or p.is_file():
            p.unlink()

    tb, export = path / TENSORBOARD, path / EXPORT
    files = [path / name for name in OUTPUTS] + list(path.glob(".*.tmp")) + [export / n for n in EXPORTS]
    for p in files + (list(tb.glob("events.out.tfevents.*")) if not tb.is_symlink() else []):
        remove(p)
    for folder in (tb, export):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
