"""The run folder: its layout, shared by the engine that writes it and the commands that read it (eval, compare,
sweep, export), and the life of every folder selfkd writes (:class:`Kind`: run, report, sweep and profile folders).

selfkd writes only into a folder it made or found empty, and marks it (:attr:`Kind.marker`, e.g. :data:`MARKER`)
when it starts writing. The process that writes there holds an exclusive lock on the marker (``flock``: the kernel
releases it when the process ends, however it ends; processes it forks, such as DataLoader workers, close their
copy). ``--overwrite`` deletes only the files selfkd writes (:attr:`Kind.outputs`), only in a marked folder. A marker
is never opened through a link. Every check here reads; nothing is written before :func:`open_folder`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import socket
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

from .atomic import new_file, open_nofollow, write_failure
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
PRETRAINED = "pretrained.json"  # what the run took from model.pretrained (models/pretrained.py: LoadReport)
EXPORT = "export"  # selfkd export's default folder
EXPORT_FORMATS = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}  # -> extension
EXPORTS = tuple(f"model{ext}" for ext in EXPORT_FORMATS.values())  # what selfkd export writes there for a run
MARKER = ".selfkd-run"  # made by selfkd; holds the PID of the process that last locked it
REPORT_FILES = ("results.md", "results.csv", "index.html", "*.png")  # what selfkd compare writes in its folder
SWEEP_LOGS, SWEEP_REPORT = "logs", "report"  # in a sweep folder: each run's console output, and the comparison
SWEEP_SLURM = "slurm"  # in a sweep folder on Slurm: the job records and submitit's files
DEMO_FILE = "demo.json"  # selfkd demo's record, in its sweep folder
OUTPUTS = (CONFIG, METRICS, METRICS_CSV, TENSORBOARD, CHECKPOINT, WEIGHTS, RELIABILITY, SUMMARY, EXAMPLES, EXPORT,
           PRETRAINED)


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


@dataclass(frozen=True)
class Kind:
    """A kind of folder selfkd writes: what it is called, the flag that names it, its marker (made by selfkd, locked
    while a process writes there), the files selfkd writes in it (names or glob patterns: what --overwrite deletes)
    and in its subfolders (``inside``: subfolder, patterns)."""

    noun: str
    flag: str
    marker: str
    outputs: tuple[str, ...]
    inside: tuple[tuple[str, tuple[str, ...]], ...] = ()


RUN = Kind("run folder", "--run-dir (or name)", MARKER, OUTPUTS,
           ((TENSORBOARD, ("events.out.tfevents.*",)), (EXPORT, EXPORTS)))
REPORT = Kind("report folder", "--out", ".selfkd-report", REPORT_FILES)  # selfkd compare
SWEEP = Kind("sweep folder", "--out", ".selfkd-sweep",  # its runs: RUN
            (SWEEP_LOGS, SWEEP_REPORT, DEMO_FILE, SWEEP_SLURM))
PROFILE = Kind("profile folder", "--profile", ".selfkd-profile", ("*.txt",))  # selfkd bench --profile
TUNE = Kind("study folder", "--out", ".selfkd-tune",  # selfkd tune: its trials' run folders are RUN
            ("study.db", "study.db-*", "tune.json", "*/base.yaml", "*/best.yaml", SWEEP_LOGS, SWEEP_REPORT,
             SWEEP_SLURM))
KINDS = (RUN, REPORT, SWEEP, PROFILE, TUNE)


def marked_folder(path: Path) -> tuple[Path, Kind] | None:
    """The innermost folder that selfkd made (it holds a marker of :data:`KINDS`) among ``path`` and the folders
    above it (links resolved), with its kind; None when there is none."""
    for folder in (resolved := Path(path).resolve(), *resolved.parents):
        for kind in KINDS:
            if os.path.lexists(folder / kind.marker):
                return folder, kind
    return None


_HELD: set[int] = set()  # the folder locks this process holds (open_folder), released by release()


def _close_held_in_child() -> None:
    """In a forked child (a DataLoader worker): close the copies of the parent's locks, so that a lock lives exactly
    as long as the process that took it (closing a copy does not unlock the parent's)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


def release(lock: int) -> None:
    """Release a folder locked by :func:`open_folder`."""
    _HELD.discard(lock)
    os.close(lock)


def _lock(fd: int, path: Path, kind: Kind, shared: bool = False, wait: bool = False) -> None:
    """Lock the open marker ``fd`` of the folder ``path`` (``shared``: only to check that no process holds it
    exclusively, so that several processes can check at once), or refuse naming the process that holds it (``wait``:
    wait for it instead)."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        holder = (os.read(fd, 200).decode(errors="replace").strip().splitlines() or ["pid unknown"])[-1]
        stop = " (Ctrl-C or SIGTERM: it saves a checkpoint)" if kind is RUN else ""
        raise ConfigError(f"The {kind.noun} {path} is in use by another selfkd process ({holder}). Wait for it to "
                          f"end, or stop it{stop}, or choose another {kind.flag}.") from None


def check_free(path: Path, kind: Kind = RUN) -> None:
    """Refuse a folder that another process holds, or whose marker is a link (reads only: a shared lock is taken and
    given back at once, so the processes of one torchrun can check the same folder together)."""
    if path.is_dir() and os.path.lexists(path / kind.marker):
        fd = open_nofollow(path / kind.marker, os.O_RDONLY)
        try:
            _lock(fd, path, kind, shared=True)
        finally:
            os.close(fd)


def _matches(folder: Path, patterns) -> list[Path]:
    """The entries of ``folder`` (links too, even dangling ones) that ``patterns`` (names, glob patterns) name."""
    return sorted(e for e in folder.iterdir() if any(fnmatch.fnmatchcase(e.name, p) for p in patterns))


def _check_makeable(path: Path, kind: Kind) -> None:
    """Refuse a folder that cannot be made because a file is in its way (it, or a folder above it, is a file)."""
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"The {kind.noun} {path} cannot be made: {blocker} is a file. Choose another {kind.flag}.")


def check_own(path: Path, kind: Kind, marked: bool | None = None) -> list[str]:
    """Refuse a folder selfkd may not write in as ``kind``: a file in the way, or a non-empty folder selfkd did not
    make (``marked``: whether it did; default: it holds the kind's marker). Returns the outputs of ``kind`` it
    holds. Reads only."""
    _check_makeable(path, kind)
    if not path.is_dir():
        return []
    entries = sorted(e.name for e in path.iterdir() if e.name != kind.marker)
    if entries and not (os.path.lexists(path / kind.marker) if marked is None else marked):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        older = (f" If it is the run folder of an older selfkd, continue it with `selfkd train --resume {path}`."
                 if kind is RUN and (path / CONFIG).is_file() and (path / CHECKPOINT).is_file() else "")
        raise ConfigError(
            f"The {kind.noun} {path} is not empty ({shown}) and selfkd did not make it (it has no {kind.marker}). "
            "selfkd writes only into folders it made or found empty, and --overwrite never deletes files selfkd did "
            f"not write. Choose another {kind.flag}, or move those files away yourself.{older}")
    return [p.name for p in _matches(path, kind.outputs)] if entries else []


def check_new(path: Path, overwrite: bool, marked: bool | None = None) -> None:
    """Refuse a folder that a new run may not write in: see :func:`check_own`, and (without ``overwrite``) a run
    folder that already holds a run. Reads only."""
    outputs = check_own(path, RUN, marked)
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


def check_report(path: Path, overwrite: bool, marked: bool | None = None) -> None:
    """Refuse a folder a report may not be written to: see :func:`check_own`, and (without ``overwrite``) a report
    folder that already holds a report. Reads only."""
    outputs = check_own(path, REPORT, marked)
    if outputs and not overwrite:
        raise ConfigError(f"The report folder {path} already holds a report ({', '.join(outputs[:5])}). Replace it "
                          "with --overwrite (deletes the files selfkd wrote in it), or choose another --out.")


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


def open_folder(path: Path, kind: Kind, check, overwrite: bool = False, shared: bool = False,
                wait: bool = False) -> int:
    """Create ``path`` if needed, mark and lock it for this process and ``check(marked)`` it again under the lock
    (``marked``: whether it held the marker before; ``shared``: a lock that processes working together in the folder,
    such as the workers of one study, share; ``wait``: wait for a process that holds it); with ``overwrite`` delete
    the files selfkd wrote in it. Returns
    the lock (a file descriptor: closing it, or the process ending, releases it: see :func:`release`). Refuses a
    folder another process holds, naming that process. What this call made (folders, the marker) is removed again
    when it fails."""
    _check_makeable(path, kind)
    made = [p for p in (path, *path.parents) if not p.exists()]  # the folders this call makes, deepest first
    fd, marked, mine = None, True, False  # marked: the folder held the marker before; mine: this call made it
    try:
        path.mkdir(parents=True, exist_ok=True)
        try:
            fd, marked = open_nofollow(path / kind.marker, os.O_RDWR | os.O_CREAT | os.O_EXCL), False
        except FileExistsError:
            fd = open_nofollow(path / kind.marker, os.O_RDWR)
        _lock(fd, path, kind, shared, wait)
        mine = not marked  # and locked: no other process took it meanwhile
        check(marked)
        os.ftruncate(fd, 0)
        os.write(fd, f"selfkd {kind.noun}\npid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.close(new_file(path / f"{kind.marker}.tmp"))  # every write makes a temporary file first: can it?
        (path / f"{kind.marker}.tmp").unlink()
        if overwrite:
            clear(path, kind)
        _HELD.add(fd)
        return fd
    except BaseException as err:
        if fd is not None:
            os.close(fd)
        _undo(path, kind, made, mine)
        if isinstance(err, OSError) and err.errno != errno.ENAMETOOLONG:  # a name too long: said by the CLI
            raise ConfigError(f"Cannot write in the {kind.noun} {path}: {write_failure(err, path)}. Free some space "
                              f"or make it writable, or choose another {kind.flag}; then run the command again.") \
                from None
        raise


def mark(path: Path, kind: Kind, shared: bool = False) -> None:
    """Mark ``path`` (made if needed) as a ``kind`` folder of selfkd's, once the caller has checked it (e.g. with
    :func:`check_own`), for work that goes on elsewhere (Slurm jobs); waits for a process that holds it."""
    release(open_folder(path, kind, lambda marked: None, shared=shared, wait=True))


def _undo(path: Path, kind: Kind, made: list[Path], mine: bool) -> None:
    """Remove the marker (``mine``: this process made it) and the folders in ``made`` (deepest first), where empty."""
    for remove in ([(path / kind.marker).unlink] if mine else []) + [folder.rmdir for folder in made]:
        with contextlib.suppress(OSError):
            remove()


def open_run(path: Path, resume: bool, overwrite: bool) -> int:
    """:func:`open_folder` for a run: checked as a run to resume (:func:`check_run`) or a new one (:func:`check_new`);
    ``overwrite`` (a new run) deletes the files selfkd wrote in it."""
    def check(marked: bool) -> None:
        if resume:
            check_run(path, "--resume")
        else:
            check_new(path, overwrite, marked)

    return open_folder(path, RUN, check, overwrite and not resume)


@contextlib.contextmanager
def report_folder(path: Path, overwrite: bool, wait: bool = False):
    """Write a report into ``path`` (:func:`open_folder` as :data:`REPORT`, checked by :func:`check_report`; ``wait``
    for a process writing it) within the ``with`` block; when the block fails, the files it wrote are deleted again,
    and the folder and marker too where this call made them: a report is written whole or not at all."""
    made = [p for p in (path, *path.parents) if not p.exists()]
    fresh = not os.path.lexists(path / REPORT.marker)
    lock = open_folder(path, REPORT, lambda marked: check_report(path, overwrite, marked), overwrite, wait=wait)
    try:
        yield
    except BaseException:
        clear(path, REPORT)
        _undo(path, REPORT, made, fresh)
        raise
    finally:
        release(lock)


def clear(path: Path, kind: Kind = RUN) -> None:
    """Delete the files selfkd writes in the folder ``path`` of ``kind`` (a link is deleted, never what it points
    to, and never followed into); other files stay."""
    def remove(p: Path) -> None:
        if p.is_symlink() or p.is_file():
            p.unlink()

    for folder, patterns in ((path, (*kind.outputs, ".*.tmp")), *((path / sub, pats) for sub, pats in kind.inside)):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for p in _matches(folder, patterns):
            remove(p)
        if folder != path and not any(folder.iterdir()):
            folder.rmdir()
