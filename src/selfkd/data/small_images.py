"""Small-image datasets held in memory as uint8 tensors: CIFAR-10/100 (the python pickles), Fashion-MNIST (the
gzipped IDX files) and generated ``synthetic`` data."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from ..memory import check_fits
from ..registry import NonNegativeInt, PositiveInt
from .datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DatasetSplits,
    ImageTensors,
    MissingFiles,
    check_labels,
    register_dataset,
    require,
)


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

def idx_file(path: Path, stem: str) -> Path:
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
        images = read_idx(idx_file(path, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(idx_file(path, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{path}: {prefix} images {images.shape} and labels {labels.shape} do not match "
                               "(expected (N, 28, 28) images and N labels).")
        labels = check_labels(torch.from_numpy(labels.astype(np.int64)), 10, path)
        return ImageTensors(torch.from_numpy(images.copy()).unsqueeze(1), labels)

    return DatasetSplits("fashion_mnist", split("train"), split("t10k"), 10, 1, (0.2860,), (0.3530,), 28,
                         "crop_flip", FASHION_CLASSES)

@register_dataset("synthetic", (), "generated in memory; no files")
def read_synthetic(path=None, num_classes: PositiveInt = 10, train_size: PositiveInt = 512,
                   test_size: PositiveInt = 256, image_size: PositiveInt = 32, channels: PositiveInt = 3,
                   seed: NonNegativeInt = 0) -> DatasetSplits:
    """Learnable random data: each class has its own colour and smooth pattern; images add per-pixel noise."""
    check_fits(4 * channels * image_size**2 * (2 * num_classes + 4 * max(train_size, test_size) + train_size
                                                + test_size), "synthetic with these options",
               "train_size, test_size, image_size, channels or num_classes")
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
