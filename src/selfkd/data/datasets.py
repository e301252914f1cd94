"""Dataset readers: local files in their standard published layouts; nothing is downloaded.

Each reader turns a dataset folder into :class:`DatasetSplits`. Small-image datasets become
uint8 tensors (:class:`ImageTensors`, kept on the training device); large-image datasets become
file lists (:class:`ImageFiles`, decoded by DataLoader workers). A ``--data-dir`` is the only place looked in
when given (used or refused, never skipped); without it the roots ``$SELFKD_DATA``, ``./data``,
``/usr/share/datasets`` are searched in that order (:func:`load_dataset`). The readers of folder
datasets (TinyImageNet, CUB-200, Stanford Dogs, MIT-67, any image folder) are in :mod:`.folders`.
"""
from __future__ import annotations

import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import DatasetError
from ..registry import Registry, checked_call
from ..tasks import DEFAULT_TASK, IGNORE_LABEL, TASKS

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ImageTensors:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,); for segmentation, masks: uint8 (N, H, W) class indices, 255 = ignore

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ImageFiles:
    paths: list[str]
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SegmentationFiles:
    """Images and their label PNGs (one class index per pixel, 255 = ignore), decoded by loader workers."""

    paths: list[str]
    mask_paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DatasetSplits:
    name: str
    train: ImageTensors | ImageFiles | SegmentationFiles
    test: ImageTensors | ImageFiles | SegmentationFiles
    num_classes: int
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    image_size: int = 32  # training crop size of the usual recipe
    augment: str = "crop_flip"  # the usual training augmentation
    classes: list[str] = field(default_factory=list)
    padding: int = 4  # crop_flip padding of the usual recipe
    task: str = DEFAULT_TASK  # what its labels are for (selfkd.tasks.TASKS): set by load_dataset
    own_val: torch.Tensor | None = None  # rows of train that are the dataset's own validation split (data.val_split)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, ImageTensors)


@dataclass
class DatasetEntry:
    reader: Callable[..., DatasetSplits]
    folders: tuple[str, ...]  # names to look for under each root (empty = none needed)
    layout: str  # the published layout, quoted in errors
    task: str = DEFAULT_TASK  # what its labels are for (selfkd.tasks.TASKS)


class MissingFiles(DatasetError):
    """A folder lacks the files of the dataset's layout (so it is not, or not all of, that dataset)."""


DATASETS: Registry = Registry("dataset")


def register_dataset(name: str, folders: tuple[str, ...], layout: str, task: str = DEFAULT_TASK):
    def add(reader):
        DATASETS.register(name)(DatasetEntry(reader, folders, layout, task))
        return reader

    return add


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_task(name: str) -> str:
    """The task of a registered dataset (classification or segmentation), known without reading it."""
    return DATASETS.get(name).task


def search_roots() -> list[Path]:
    """Where a dataset is looked for when no --data-dir is given."""
    roots = [Path(os.environ["SELFKD_DATA"]).expanduser()] if os.environ.get("SELFKD_DATA") else []
    return roots + [Path("data"), Path("/usr/share/datasets")]


# Errors that mean "these files are damaged": turned into a DatasetError naming the folder and layout.
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, pickle.UnpicklingError, tarfile.TarError,
               zipfile.BadZipFile, struct.error, RuntimeError, NotImplementedError)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, **options) -> DatasetSplits:
    """Find ``name`` and read it: in ``data_dir`` only, when it is given (it may also be the dataset folder itself:
    an explicit folder is used or refused, never skipped), else under :func:`search_roots`. The splits are checked
    (:func:`check_splits`)."""
    entry: DatasetEntry = DATASETS.get(name)

    def read(path: Path | None) -> DatasetSplits:  # the task is the registry entry's
        splits = checked_call(entry.reader, "dataset", name, options, fixed=(path,))
        return check_splits(replace(splits, task=entry.task))

    if not entry.folders:
        return read(None)
    itself = Path(data_dir).expanduser() if data_dir else None
    elsewhere = f"leave --data-dir out to search {', '.join(map(str, search_roots()))}"
    if itself is not None and not itself.is_dir():
        raise DatasetError(f"Dataset '{name}' was not found: --data-dir {itself} "
                           f"{'is not a folder' if itself.exists() else 'does not exist'}. Give the folder that holds "
                           f"it (expected layout: {entry.layout}), or {elsewhere}.")
    roots = [itself] if itself is not None else search_roots()
    candidates = [root / folder for root in roots for folder in entry.folders] + ([itself] if itself else [])
    note = ""
    for path in candidates:
        if not path.exists():
            continue
        try:
            return read(path)
        except MissingFiles as err:
            if path != itself:
                raise DatasetError(f"{err} The expected layout of '{name}' is: {entry.layout}.") from None
            note = f" ({path} itself is not the dataset folder: {str(err).rstrip('.')})"
        except READ_ERRORS as err:
            raise DatasetError(
                f"Dataset '{name}' at {path} could not be read ({type(err).__name__}: {err}). "
                f"The expected layout is: {entry.layout}. Re-download or re-extract it."
            ) from None
    searched = ", ".join(str(p) for p in candidates)
    where = (f"Put it there, or {elsewhere}" if itself is not None
             else "Put it under one of these places or pass --data-dir (or set $SELFKD_DATA)")
    raise DatasetError(f"Dataset '{name}' was not found. Expected layout: {entry.layout}. Looked in: "
                       f"{searched}{note}. {where}.")


def check_splits(splits: DatasetSplits) -> DatasetSplits:
    """Refuse a dataset a run cannot learn from or be measured on: an empty split, fewer than two classes, or
    (classification) fewer than two classes among the training labels."""
    for split, data in (("training", splits.train), ("test", splits.test)):
        if len(data) == 0:
            raise DatasetError(f"Dataset '{splits.name}' has no {split} images; give it some (check the folder or the "
                               "dataset options).")
    if TASKS[splits.task].dense:
        if splits.num_classes < 2:
            raise DatasetError(f"Dataset '{splits.name}' has {splits.num_classes} class(es): a segmenter needs at "
                               "least two classes (the background and at least one object class). Give it more "
                               "classes.")
        for split, data in (("training", splits.train), ("test", splits.test)):  # masks read from files: when read
            if isinstance(data, ImageTensors) and (problem := mask_problem(data.labels, splits.num_classes)):
                raise DatasetError(f"The {split} masks of dataset '{splits.name}' {problem}. Check its options, or "
                                   "delete its cache ($SELFKD_CACHE) if it was edited.")
    else:
        present = torch.unique(splits.train.labels).numel()
        if splits.num_classes < 2 or present < 2:
            raise DatasetError(f"Dataset '{splits.name}' has {splits.num_classes} class(es) and its training images "
                               f"show {present}: a classifier needs at least two classes to learn anything (with one, "
                               "the loss is 0 and the accuracy 100 % from the start). Give it more classes.")
    return splits


# --------------------------------------------------------------------------- helpers shared by readers

def mask_problem(masks: torch.Tensor, num_classes: int) -> str | None:
    """What is wrong with uint8 ``masks`` (no labelled pixel, or a label that is neither a class nor the ignored
    label), or None."""
    labelled = masks != IGNORE_LABEL
    if not bool(labelled.any()):
        return (f"hold no labelled pixel (every pixel is {IGNORE_LABEL}, unlabelled), so there is nothing to learn or "
                "measure")
    top = int(torch.where(labelled, masks, 0).max())
    return (f"hold label {top}, but the dataset has {num_classes} classes (0..{num_classes - 1}; {IGNORE_LABEL}: "
            "unlabelled)") if top >= num_classes else None


def check_labels(labels: torch.Tensor, num_classes: int, where: Path | str) -> torch.Tensor:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetError(
            f"Labels in {where} fall outside 0..{num_classes - 1} "
            f"(found {int(labels.min())}..{int(labels.max())}); the files are corrupt or of another dataset."
        )
    return labels


def require(folder: Path, *names: str) -> None:
    """Raise :class:`MissingFiles` unless every ``folder/name`` exists."""
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise MissingFiles(f"{folder} has no {', '.join(missing)}.")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")  # what torchvision.io.decode_image reads

def lines(file: Path) -> list[str]:
    """Non-empty lines, stripped (the lists of some datasets have Windows line ends)."""
    if not file.is_file():
        raise MissingFiles(f"{file.parent} has no {file.name}.")
    return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]

def check_exist(paths: list[str], where: Path) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"{len(missing)} of the {len(paths)} images listed for {where} are missing "
                           f"(e.g. {missing[0]}). Extract the image archive completely into {where}.")


# --------------------------------------------------------------------------- CIFAR


# --------------------------------------------------------------------------- Fashion-MNIST


# --------------------------------------------------------------------------- synthetic

