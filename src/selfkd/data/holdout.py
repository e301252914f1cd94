"""Which images a run trains on and which it validates on.

The validation split (``data.val_split``) is held out of the dataset's training set first: a count or a fraction of
it, drawn with ``data.val_seed`` (never the run's seed, so every method and every seed of a comparison validates on
the same images), stratified by class for classification (each class gives its share, largest remainders rounded
up) and a plain random draw for segmentation; or the dataset's own validation split (``val_split: dataset``, where
its reader gives one, :attr:`DatasetSplits.own_val`). The training subset (``data.train_subset``, drawn with the
run's seed) is then taken from what is left. Both are pure functions of the data and the settings, so every
process of a run, and a resumed run, draws the same images.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..tasks import TASKS
from .datasets import DatasetSplits, ImageFiles, ImageTensors, SegmentationFiles
from .settings import DataConfig

Data = ImageTensors | ImageFiles | SegmentationFiles


def take(data: Data, rows: torch.Tensor) -> Data:
    """The samples of ``data`` at ``rows`` (int64 indices), in that order."""
    if isinstance(data, ImageTensors):
        return ImageTensors(data.images[rows], data.labels[rows])
    keep = rows.tolist()
    if isinstance(data, SegmentationFiles):
        return SegmentationFiles([data.paths[i] for i in keep], [data.mask_paths[i] for i in keep])
    return ImageFiles([data.paths[i] for i in keep], data.labels[rows])


def subset(data: Data, n: int | None, seed: int) -> Data:
    """The first ``n`` samples of a fixed shuffle (all when ``n`` is None or too large)."""
    if n is None or n >= len(data):
        return data
    return take(data, torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values)


def val_rows(splits: DatasetSplits, cfg: DataConfig) -> torch.Tensor | None:
    """Indices into ``splits.train`` of the validation images, sorted (None without ``data.val_split``)."""
    split, total = cfg.val_split, len(splits.train)
    if split is None:
        return None
    if split == "dataset":
        if splits.own_val is None:
            raise ConfigError(f"data.val_split=dataset asks for the validation split of {splits.name} itself, but "
                              f"{splits.name} has none (its reader gives a training and a test split). Hold one out "
                              "of the training set instead: data.val_split=N images or a fraction such as 0.1.")
        return splits.own_val.sort().values
    count = split if isinstance(split, int) else round(split * total)
    if not 0 < count < total:
        raise ConfigError(f"data.val_split={split} asks for {count} of the {total} training images of "
                          f"{splits.name}, which leaves {'no validation' if count <= 0 else 'no training'} image. "
                          f"Give a count between 1 and {total - 1} or a fraction between {1 / total:.2g} and "
                          f"{1 - 1 / total:.4g}.")
    generator = torch.Generator().manual_seed(cfg.val_seed)
    if TASKS[splits.task].dense:  # one label per pixel: no class to stratify by
        return torch.randperm(total, generator=generator)[:count].sort().values
    return _stratified(splits, count, generator)


def _stratified(splits: DatasetSplits, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` training images, each class giving its share of them (the largest remainders rounded up, ties to
    the lower class); refuses a split that would take every training image of a class."""
    labels = splits.train.labels.cpu()
    classes, sizes = labels.unique(return_counts=True)
    share = sizes.double() * count / len(labels)
    quota = share.floor().long()
    order = torch.argsort(share - quota, descending=True, stable=True)
    quota[order[:count - int(quota.sum())]] += 1
    emptied = [int(c) for c, q, n in zip(classes, quota, sizes) if q >= n]
    if emptied:
        names = [splits.classes[c] if c < len(splits.classes) else str(c) for c in emptied]
        raise ConfigError(f"data.val_split={count} images would hold out every training image of class(es) "
                          f"{', '.join(names)} of {splits.name} (stratified by class: each class gives its share), so "
                          "the run could not learn them. Give a smaller data.val_split.")
    rows = []
    for c, q in zip(classes, quota):
        members = (labels == c).nonzero().squeeze(1)
        rows.append(members[torch.randperm(len(members), generator=generator)[:q]])
    return torch.cat(rows).sort().values


def _rest(splits: DatasetSplits, held: torch.Tensor | None) -> Data:
    """The training set without the rows ``held`` out."""
    if held is None:
        return splits.train
    keep = torch.ones(len(splits.train), dtype=torch.bool)
    keep[held] = False
    return take(splits.train, keep.nonzero().squeeze(1))


def training_set(splits: DatasetSplits, cfg: DataConfig, seed: int) -> Data:
    """What the run trains on: the training set without the validation split, then its ``train_subset``."""
    return subset(_rest(splits, val_rows(splits, cfg)), cfg.train_subset, seed)


def training_size(splits: DatasetSplits, cfg: DataConfig) -> int:
    """``len(training_set(...))`` without drawing the images (methods with per-sample state need it)."""
    held = val_rows(splits, cfg)
    rest = len(splits.train) - (0 if held is None else len(held))
    return min(rest, cfg.train_subset or rest)


def validation_set(splits: DatasetSplits, cfg: DataConfig) -> Data | None:
    """The validation images (None without ``data.val_split``)."""
    held = val_rows(splits, cfg)
    return None if held is None else take(splits.train, held)
