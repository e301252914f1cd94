"""Dataset readers: local files in their standard published layouts; nothing is downloaded.

Each reader turns a dataset folder into :class:`DatasetSplits`. Small-image datasets become
uint8 tensors (:class:`ImageTensors`, kept on the training device); large-image datasets become
file lists (:class:`ImageFiles`, decoded by DataLoader workers). A ``--data-dir`` is the only place looked in
when given (used or refused, never skipped); without it the roots ``$SELFKD_DATA``, ``./data``,
``/usr/share/datasets`` are searched in that order (:func:`load_dataset`). The readers of folder
datasets (TinyImageNet, CUB-200, Stanford Dogs, MIT-67, any image folder) are in :mod:`.folders`.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DatasetError
from ..registry import NonNegativeInt, PositiveInt, Registry, checked_call

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
    task: str = "classification"  # or "segmentation" (labels are per-pixel masks): set by load_dataset
    ignore_index: int = 255  # mask value of unlabelled pixels (segmentation)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, ImageTensors)


@dataclass
class DatasetEntry:
    reader: Callable[..., DatasetSplits]
    folders: tuple[str, ...]  # names to look for under each root (empty = none needed)
    layout: str  # the published layout, quoted in errors
    task: str = "classification"  # what its labels are for (selfkd.registry.TASK_NAMES)


class MissingFiles(DatasetError):
    """A folder lacks the files of the dataset's layout (so it is not, or not all of, that dataset)."""


DATASETS: Registry = Registry("dataset")


def register_dataset(name: str, folders: tuple[str, ...], layout: str, task: str = "classification"):
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
    if splits.task == "segmentation" and splits.num_classes < 2:
        raise DatasetError(f"Dataset '{splits.name}' has {splits.num_classes} class(es): a segmenter needs at least "
                           "two classes (the background and at least one object class). Give it more classes.")
    if splits.task == "classification":
        present = torch.unique(splits.train.labels).numel()
        if splits.num_classes < 2 or present < 2:
            raise DatasetError(f"Dataset '{splits.name}' has {splits.num_classes} class(es) and its training images "
                               f"show {present}: a classifier needs at least two classes to learn anything (with one, "
                               "the loss is 0 and the accuracy 100 % from the start). Give it more classes.")
    return splits


# --------------------------------------------------------------------------- helpers shared by readers

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


def decode_rgb(path: str) -> torch.Tensor:
    """An image file (JPEG, PNG, GIF, WebP; grayscale, CMYK, 16-bit or with alpha) as uint8 RGB ``(3, H, W)``;
    the first frame of an animated GIF."""
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2.functional import to_dtype

    try:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        return to_dtype(image[0] if image.ndim == 4 else image, torch.uint8, scale=True)
    except (RuntimeError, OSError, ValueError) as err:
        reason = re.sub(r"^[^,]*, \S+:\d+, ", "", str(err).strip())  # drop the C++ source location
        raise DatasetError(
            f"Could not read the image {path}: {reason}. The file is missing, corrupt or not an image; "
            "re-download or re-extract the dataset."
        ) from None


# --------------------------------------------------------------------------- CIFAR

class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles of plain dicts, lists, bytes and numpy arrays; refuse anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else value


def _load_cifar_pickle(data: bytes, where) -> dict:
    """One batch dict with str keys: the originals (Python 2 pickles) read with latin1 give str keys,
    batches re-pickled after reading with ``encoding='bytes'`` have b'data' keys."""
    batch = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(batch, dict):
        raise DatasetError(f"{where} is not a CIFAR batch (a pickled dict was expected).")
    return {_text(k): v for k, v in batch.items()}


def _cifar_batches(path: Path, files: list[str]) -> dict[str, dict]:
    """Read pickled CIFAR batches from the extracted folder or the original .tar.gz (in one pass)."""
    if path.is_dir():
        require(path, *files)
        return {f: _load_cifar_pickle((path / f).read_bytes(), path / f) for f in files}
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name in files and name not in out:
                out[name] = _load_cifar_pickle(tar.extractfile(member).read(), f"{path}:{member.name}")
    missing = [f for f in files if f not in out]
    if missing:
        raise MissingFiles(f"{path} has no member {', '.join(missing)}; it is not the original CIFAR archive.")
    return out


def _cifar(path: Path, files_train, files_test, label_key, meta_file, names_key, num_classes, name, mean, std):
    batches = _cifar_batches(path, files_train + files_test + [meta_file])

    def field_of(f, key):
        if key not in batches[f]:
            raise DatasetError(f"{path}: the CIFAR batch '{f}' has no '{key}' entry; it is not from {name}.")
        return batches[f][key]

    def split(files):
        data = np.concatenate([np.asarray(field_of(f, "data"), dtype=np.uint8) for f in files])
        labels = np.concatenate([np.asarray(field_of(f, label_key), dtype=np.int64) for f in files])
        if data.ndim != 2 or data.shape[1] != 3072:
            raise DatasetError(f"{path}: CIFAR images must be rows of 3072 bytes, found shape {data.shape}.")
        if len(data) != len(labels):
            raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels in {', '.join(files)}.")
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        return ImageTensors(images, check_labels(torch.from_numpy(labels), num_classes, path))

    classes = [_text(c) for c in field_of(meta_file, names_key)]
    if len(classes) != num_classes:
        raise DatasetError(f"{path}: '{meta_file}' names {len(classes)} classes, {name} has {num_classes}.")
    return DatasetSplits(name, split(files_train), split(files_test), num_classes, 3, mean, std, 32,
                         "crop_flip", classes)


@register_dataset("cifar10", ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
                  "a folder 'cifar-10-batches-py' with data_batch_1..5, test_batch and batches.meta "
                  "(torchvision's layout), or the original 'cifar-10-python.tar.gz'")
def read_cifar10(path: Path) -> DatasetSplits:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar(path, train, ["test_batch"], "labels", "batches.meta", "label_names", 10, "cifar10",
                  CIFAR10_MEAN, CIFAR10_STD)


@register_dataset("cifar100", ("cifar-100-python", "cifar-100-python.tar.gz"),
                  "a folder 'cifar-100-python' with files train, test and meta (torchvision's layout), "
                  "or the original 'cifar-100-python.tar.gz'")
def read_cifar100(path: Path) -> DatasetSplits:
    return _cifar(path, ["train"], ["test"], "fine_labels", "meta", "fine_label_names", 100, "cifar100",
                  CIFAR100_MEAN, CIFAR100_STD)


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not): magic 0x0000 0x08 ndim, big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path} is truncated inside its header.")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path} has {body.size} data bytes but its header says {dims} "
                           f"({int(np.prod(dims))} bytes): the file is truncated or corrupt.")
    return body.reshape(dims)


def _idx_file(path: Path, stem: str) -> Path:
    for candidate in (path / f"{stem}.gz", path / stem):
        if candidate.exists():
            return candidate
    raise MissingFiles(f"{path} has no '{stem}.gz' (or '{stem}').")


@register_dataset("fashion_mnist", ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
                  "a folder 'fashion-mnist' with train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                  "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (as Debian's dataset-fashion-mnist "
                  "package installs them in /usr/share/datasets/fashion-mnist)")
def read_fashion_mnist(path: Path) -> DatasetSplits:
    def split(prefix):
        images = read_idx(_idx_file(path, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_idx_file(path, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{path}: {prefix} images {images.shape} and labels {labels.shape} do not match "
                               "(expected (N, 28, 28) images and N labels).")
        labels = check_labels(torch.from_numpy(labels.astype(np.int64)), 10, path)
        return ImageTensors(torch.from_numpy(images.copy()).unsqueeze(1), labels)

    return DatasetSplits("fashion_mnist", split("train"), split("t10k"), 10, 1, (0.2860,), (0.3530,), 28,
                         "crop_flip", FASHION_CLASSES)


# --------------------------------------------------------------------------- synthetic

@register_dataset("synthetic", (), "generated in memory; no files")
def read_synthetic(path=None, num_classes: PositiveInt = 10, train_size: PositiveInt = 512,
                   test_size: PositiveInt = 256, image_size: PositiveInt = 32, channels: PositiveInt = 3,
                   seed: NonNegativeInt = 0) -> DatasetSplits:
    """Learnable random data: each class has its own colour and smooth pattern; images add per-pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    pattern = torch.rand(num_classes, channels, image_size, image_size, generator=gen)
    pattern = torch.nn.functional.avg_pool2d(pattern, 5, 1, 2)  # smooth blobs survive crops
    pattern = (pattern - pattern.mean()) / pattern.std()
    colour = torch.randn(num_classes, channels, 1, 1, generator=gen)
    prototypes = pattern + colour

    def split(n):
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        noise = torch.randn(n, channels, image_size, image_size, generator=gen)
        images = 128 + 50 * prototypes[labels] + 20 * noise
        return ImageTensors(images.clamp(0, 255).to(torch.uint8), labels)

    return DatasetSplits("synthetic", split(train_size), split(test_size), num_classes, channels,
                         (0.5,) * channels, (0.25,) * channels, image_size, "crop_flip",
                         [f"class_{k}" for k in range(num_classes)])
