"""Atomic file writes: a temporary file, fsync, rename. The previous file survives any failure. No file selfkd writes
or locks is opened through a symbolic link (:func:`open_nofollow`): a link planted where selfkd writes could point
at any file of the user's."""
from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from .errors import ConfigError, SelfKDError, TrainingError, first_line

AGAIN = "Free some space (or make the folder writable), then run the command again."


def open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    """``os.open(path, flags)``, refused when ``path`` is a symbolic link (a :class:`ConfigError` saying so)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
    raise ConfigError(f"{path} is a symbolic link. selfkd never writes or locks a file through a link (it could point "
                      "at any file); remove the link, then run the command again.")


def new_file(path: Path) -> int:
    """Make ``path`` a new empty file, open for writing (the file descriptor is returned): a file or link already
    there (a temporary file left by a crash) is removed first, never written through."""
    Path(path).unlink(missing_ok=True)
    return open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def make_parent(path: Path, flag: str) -> None:
    """Make the folder of ``path`` (given as ``flag``, e.g. ``--out``) and the folders above it, or refuse saying
    why."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = "a file is in its way" if isinstance(err, (FileExistsError, NotADirectoryError)) else err.strerror
        raise ConfigError(f"Cannot write {path}: its folder {path.parent} cannot be made ({reason}). Pass {flag} "
                          "with a writable place.") from None


def atomic_write(path: Path, write, then: str = AGAIN) -> None:
    """``write(tmp_path)``, fsync, then rename over ``path``: the old file survives any failure, and no temporary
    file is left behind, whatever the writer raises (Ctrl-C included). The file gets the permissions the umask gives
    (some writers, e.g. safetensors, make theirs private). A failed write is a :class:`TrainingError` saying why and
    ``then`` (what to do next); a :class:`SelfKDError` of the writer's own (it explained itself) is raised as it is."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        os.close(new_file(tmp))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)  # 0o666 less the umask
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as err:
        reason = write_failure(err, path.parent)  # before the temporary file is deleted (a full disk frees up)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        explained = isinstance(err, SelfKDError) or getattr(err, "errno", 0) == errno.ENAMETOOLONG  # by the CLI
        if not isinstance(err, Exception) or explained:  # Ctrl-C, SystemExit
            raise
        raise TrainingError(f"Could not write {path}: {reason}. The previous file (if any) is intact and nothing "
                            f"half-written was left. {then}") from None


def write_failure(err: BaseException, folder: Path) -> str:
    """Why a write into ``folder`` failed, in words: "the disk is full" when it is, else the error's first line
    without the C++ source locations that torch's writer adds."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    try:
        st = os.statvfs(folder)
        full = st.f_bfree * st.f_frsize < 2**20
    except OSError:
        full = False
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in text or full:
        return "the disk is full"
    return first_line(err, re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", text))
