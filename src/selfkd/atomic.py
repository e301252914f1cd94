"""Atomic file writes: a temporary file, fsync, rename. The previous file survives any failure."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from .errors import TrainingError


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, then rename over ``path``: the old file survives any failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if getattr(err, "errno", None) == errno.ENOSPC or "No space" in str(err) else str(err)
        raise TrainingError(
            f"Could not write {path}: {reason}. The previous file (if any) is intact. "
            "Free some space or choose another --run-dir, then resume with `selfkd train --resume "
            f"{path.parent}`."
        ) from None
