"""On-disk caches of decoded or generated images (``$SELFKD_CACHE``, default ``~/.cache/selfkd``): ``.npz`` files
written atomically by each process, validated by shape and dtype when read, and never required (a failure only warns
and the data is made again)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError, SelfKDWarning


def cache_dir() -> Path:
    return Path(os.environ.get("SELFKD_CACHE") or "~/.cache/selfkd").expanduser()

def save_cache(file: Path, arrays: dict[str, np.ndarray], what: str, stale: str | None = None) -> None:
    """Write ``arrays`` (``what``, for the warning) to the ``.npz`` cache ``file`` through a temporary file of this
    process (several ranks may write at once), first removing the older caches matching the glob ``stale``. A failure
    only warns: the data is made again next time."""
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        for old in file.parent.glob(stale) if stale else ():
            old.unlink(missing_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, file)
    except OSError as err:
        with contextlib.suppress(OSError):  # e.g. the cache folder's path runs through a file
            tmp.unlink(missing_ok=True)
        warnings.warn(f"Could not cache {what} in {file} ({err}); they will be made again next time. Set "
                      "$SELFKD_CACHE to a writable folder.", SelfKDWarning, stacklevel=3)

def load_cache(file: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """The uint8 arrays named in ``shapes`` from the ``.npz`` cache ``file``, or None when it is absent, damaged
    or holds other shapes (then the data is made again)."""
    try:
        with np.load(file, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in shapes}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if all(a.dtype == np.uint8 and a.shape == shapes[key] for key, a in arrays.items()):
        return arrays
    return None

def fingerprint(groups: dict[str, list[str]]) -> str:
    """Hash of every file's path, size and modification time: a changed dataset gets a new key."""
    digest = hashlib.sha256()
    for group, files in groups.items():
        digest.update(f"{group}:{len(files)}\n".encode())
        for f in files:
            try:
                st = os.stat(f)
            except OSError as err:
                raise DatasetError(f"Could not read the image {f}: {err.strerror}. Re-extract the dataset.") from None
            digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
