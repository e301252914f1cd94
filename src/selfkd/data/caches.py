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

from ..atomic import new_file
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
        with os.fdopen(new_file(tmp), "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, file)
    except OSError as err:
        with contextlib.suppress(OSError):  # e.g. the cache folder's path runs through a file
            tmp.unlink(missing_ok=True)
        warnings.warn(f"Could not cache {what} in {file} ({err}); they will be made again next time. Set "
                      "$SELFKD_CACHE to a writable folder.", SelfKDWarning, stacklevel=3)

def npz_headers(file: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype of each array of the ``.npz`` file, read from its headers without loading any array (a
    hostile file may decompress to any size)."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    headers = {}
    with zipfile.ZipFile(file) as archive:
        for name in archive.namelist():
            with archive.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                if version not in readers:
                    raise ValueError(f"{name} is in .npy format {version}, which selfkd does not write")
                shape, _, dtype = readers[version](fh)
            headers[name.removesuffix(".npy")] = (tuple(shape), dtype)
    return headers


def load_cache(file: Path, shapes: dict[str, tuple[int, ...]], check=None) -> dict[str, np.ndarray] | None:
    """The uint8 arrays named in ``shapes`` from the ``.npz`` cache ``file``, or None when it is absent, damaged,
    holds other shapes (checked before anything is loaded) or fails ``check(arrays)`` (what else a cache must hold to
    be used, e.g. a label range); then the data is made again."""
    try:
        headers = npz_headers(file)
        if any(headers.get(key) != (shape, np.dtype(np.uint8)) for key, shape in shapes.items()):
            return None
        with np.load(file, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in shapes}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    return arrays if check is None or check(arrays) else None

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
