"""Memory: whether what a user's options size fits in this machine's memory, checked before any of it is allocated.

An option that sizes memory (a generated dataset's image count and size, an export's check batch) is refused with
one paragraph when the estimate exceeds what is available, instead of an allocator's traceback (or the kernel's
out-of-memory killer) after minutes of work.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

FORWARD = 32  # a forward pass holds up to about this many times the bytes of its float32 images (CNNs, segmenters)


def available_bytes() -> int:
    """The memory a new allocation can get: the kernel's MemAvailable, within the limit of this process's cgroup (a
    container's) where one is set; the physical memory where neither can be read."""
    sizes = []
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        sizes += [int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            sizes.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(sizes) if sizes else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(nbytes: int, what: str, smaller: str) -> None:
    """Refuse ``what`` (e.g. "fmnist_scenes with these options") when its estimated ``nbytes`` exceed the available
    memory; ``smaller``: which options make it smaller."""
    free = available_bytes()
    if nbytes > free:
        raise ConfigError(f"{what} needs about {nbytes / 2**30:,.1f} GiB of memory, more than the "
                          f"{free / 2**30:,.1f} GiB available here. Lower {smaller}.")


def forward_bytes(images: int, channels: int, size: int) -> int:
    """About the memory a forward pass of ``images`` float32 images of ``channels``×``size``×``size`` holds."""
    return images * channels * size**2 * 4 * FORWARD
