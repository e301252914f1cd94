"""The batches of the fixtures recorded by ``record_selfkdlib.py`` and the authors' recorders: what a recorder
writes (seeds, shapes and labels in the official layout), the tensors of one batch, and the same batch in
selfkd's layout. Nothing here imports selfkd.

Layouts (a fixture's ``"layout"``):

- ``plain``: B images, B labels.
- ``pairs`` (CS-KD): ``[anchors; partners]``, each partner of its anchor's class (same in selfkd).
- ``views`` (DDGSD, DLB): ``[v¹; v²]``, two views of B images, B labels (selfkd repeats the labels).
- ``groups`` (BAKE): n anchors, then each anchor's ``partners`` images of its class in a row; selfkd's batch is
  ``[anchors; 1st partners; 2nd; ...]``.
- ``indexed`` (PS-KD): B images with their dataset indices (each sample keeps its label across epochs).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .harness import images, labels


def _labels(layout: str, step: int, batch: int, num_classes: int, index: list[int] | None,
            partners: int) -> torch.Tensor:
    if layout == "indexed":
        return labels(2000, 2 * batch, num_classes)[torch.tensor(index)]
    if layout == "groups":
        y = labels(2000 + step, batch // (partners + 1), num_classes)
        return torch.cat([y, y.repeat_interleave(partners)])
    y = labels(2000 + step, batch, num_classes)
    return torch.cat([y, y]) if layout == "pairs" else y


def plan(layout: str, per_epoch: tuple[int, ...], batch: int, num_classes: int, size: int,
         partners: int = 3) -> list[dict]:
    """Every step's batch: ``epoch``, ``images_seed``, ``images`` (shape), ``labels`` (official layout) and, for
    ``indexed``, ``index`` — a fresh permutation of the 2B samples each epoch (new images each step: a new
    augmentation). ``batch``: images per batch (``groups``: anchors and partners together)."""
    steps = []
    for epoch, count in enumerate(per_epoch):
        order = torch.randperm(2 * batch, generator=torch.Generator().manual_seed(3000 + epoch)).tolist()
        for i in range(count):
            index = order[i * batch:(i + 1) * batch] if layout == "indexed" else None
            y = _labels(layout, len(steps), batch, num_classes, index, partners)
            n = 2 * batch if layout == "views" else len(y)
            entry = {"epoch": epoch, "images_seed": 1000 + len(steps), "images": [n, 3, size, size],
                     "labels": y.tolist()}
            steps.append(entry if index is None else {**entry, "index": index})
    return steps


def tensors(entry: Mapping, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(images, labels, indices or None) of one planned batch, in the official layout."""
    index = torch.tensor(entry["index"]) if "index" in entry else None
    return images(entry["images_seed"], entry["images"], dtype), torch.tensor(entry["labels"]), index


def selfkd_inputs(fixture: Mapping, entry: Mapping, dtype: torch.dtype) -> tuple:
    """A planned batch as selfkd's method takes it: ``(images, targets[, index])``."""
    x, y, index = tensors(entry, dtype)
    layout = fixture.get("layout", "plain")
    if layout == "views":
        return x, torch.cat([y, y])
    if layout == "groups":
        m = fixture["shapes"]["partners"]
        n = y.shape[0] // (m + 1)
        order = list(range(n)) + [n + b * m + k for k in range(m) for b in range(n)]
        return x[order], y[order]
    return (x, y) if index is None else (x, y, index)
