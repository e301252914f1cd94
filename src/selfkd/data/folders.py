"""Readers of image-folder datasets, each in its original published layout (no reorganisation).

TinyImageNet (64x64) is decoded once into uint8 tensors held in memory and cached on disk;
CUB-200-2011, Stanford Dogs, MIT-67 and any ``train/``+``val/`` class-folder tree stay file
lists (:class:`ImageFiles`) that DataLoader workers decode (:mod:`selfkd.data.files`).
"""
from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .caches import cache_dir, fingerprint, load_cache, save_cache
from .datasets import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSplits,
    ImageFiles,
    ImageTensors,
    check_exist,
    check_labels,
    lines,
    register_dataset,
    require,
)
from .decoding import decode_rgb


def _table(file: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of ``columns`` fields (the last field keeps its inner spaces)."""
    rows = [line.split(None, columns - 1) for line in lines(file)]
    for number, row in enumerate(rows, start=1):
        if len(row) != columns:
            raise DatasetError(f"{file} line {number} has {len(row)} fields instead of {columns}; the file is "
                               "damaged or not the original one.")
    return rows


def _subfolders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders (the class folders)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _file_splits(name: str, where: Path, train, test, classes: list[str], listed: bool = True) -> DatasetSplits:
    """Splits of file lists with the usual ImageNet-style recipe: RandomResizedCrop(224) + flip. ``listed``: the
    paths come from the dataset's list files, so check they exist (paths found on disk need no check)."""

    def files(paths: list[str], labels: list[int], split: str) -> ImageFiles:
        if not paths:
            raise DatasetError(f"{where} lists no {split} images; the dataset is incomplete.")
        labels = check_labels(torch.tensor(labels, dtype=torch.int64), len(classes), where)
        if listed:
            check_exist(paths, where)
        return ImageFiles(paths, labels)

    return DatasetSplits(name, files(*train, "training"), files(*test, "test"), len(classes), 3,
                         IMAGENET_MEAN, IMAGENET_STD, 224, "rrc_flip", classes)


# --------------------------------------------------------------------------- TinyImageNet


def decode_images(files: list[str], size: int) -> np.ndarray:
    """Decode ``size`` x ``size`` images to uint8 ``(N, 3, size, size)`` with a thread pool."""
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    chunk = 256

    def decode(start: int) -> None:
        for i in range(start, min(start + chunk, len(files))):
            image = decode_rgb(files[i])
            if image.shape[1:] != (size, size):
                raise DatasetError(f"{files[i]} is {image.shape[2]}x{image.shape[1]} pixels; every image of "
                                   f"this dataset is {size}x{size}. The file is not from the original release.")
            out[i] = image.numpy()

    pool = ThreadPoolExecutor(min(16, os.cpu_count() or 1))
    try:
        list(pool.map(decode, range(0, len(files), chunk)))
    finally:
        pool.shutdown(cancel_futures=True)
    return out


def cached_images(name: str, root: Path, groups: dict[str, list[str]], size: int) -> dict[str, np.ndarray]:
    """Decoded images of each group of files, read from / written to an ``.npz`` in :func:`cache_dir`.

    The cache file name holds a hash of the dataset folder and one of the files' sizes and mtimes;
    older caches of the same folder are replaced. A damaged or unwritable cache only costs a re-decode.
    """
    prefix = f"{name}-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]}-"
    file = cache_dir() / f"{prefix}{fingerprint(groups)[:16]}.npz"
    arrays = load_cache(file, {group: (len(files), 3, size, size) for group, files in groups.items()})
    if arrays is not None:
        return arrays
    arrays = {group: decode_images(files, size) for group, files in groups.items()}
    save_cache(file, arrays, f"the decoded {name} images", stale=f"{prefix}*.npz")
    return arrays


@register_dataset("tinyimagenet", ("tiny-imagenet-200",),
                  "the original 'tiny-imagenet-200' folder: wnids.txt, words.txt, "
                  "train/<wnid>/images/<wnid>_<i>.JPEG and val/images/val_<i>.JPEG labelled by "
                  "val/val_annotations.txt (the test split is val)")
def read_tinyimagenet(path: Path) -> DatasetSplits:
    """200 classes (sorted wnids, as ImageFolder numbers them), 100,000 train / 10,000 val images."""
    require(path, "wnids.txt", "words.txt", "train", "val/images", "val/val_annotations.txt")
    wnids = sorted(lines(path / "wnids.txt"))
    if len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path / 'wnids.txt'} lists a class twice; the file is damaged.")
    label_of = {wnid: k for k, wnid in enumerate(wnids)}
    words = dict(_table(path / "words.txt", 2))

    train_paths, train_labels = [], []
    for k, wnid in enumerate(wnids):
        folder = path / "train" / wnid / "images"
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".jpeg")) if folder.is_dir() else []
        if not names:
            raise DatasetError(f"{folder} holds no JPEG images; the training set is incomplete. "
                               "Re-extract tiny-imagenet-200.zip.")
        train_paths += [str(folder / n) for n in names]
        train_labels += [k] * len(names)

    test_paths, test_labels = [], []
    annotations = path / "val" / "val_annotations.txt"
    for number, (name, rest) in enumerate(_table(annotations, 2), start=1):
        wnid = rest.split()[0]
        if wnid not in label_of:
            raise DatasetError(f"{annotations} line {number} labels {name} with '{wnid}', which is not one of "
                               f"the {len(wnids)} classes of wnids.txt; the files are of different releases.")
        test_paths.append(str(path / "val" / "images" / name))
        test_labels.append(label_of[wnid])

    images = cached_images("tinyimagenet", path, {"train": train_paths, "test": test_paths}, 64)
    train = ImageTensors(torch.from_numpy(images["train"]), torch.tensor(train_labels, dtype=torch.int64))
    test = ImageTensors(torch.from_numpy(images["test"]), torch.tensor(test_labels, dtype=torch.int64))
    return DatasetSplits("tinyimagenet", train, test, len(wnids), 3, IMAGENET_MEAN, IMAGENET_STD, 64, "crop_flip",
                         [words.get(w, w) for w in wnids], padding=8)


# --------------------------------------------------------------------------- CUB-200-2011

@register_dataset("cub200", ("CUB_200_2011", "cub200"),
                  "the original 'CUB_200_2011' folder: images.txt, image_class_labels.txt (1-based), "
                  "train_test_split.txt, classes.txt and images/<class>/*.jpg")
def read_cub200(path: Path) -> DatasetSplits:
    """The official split: 5,994 train / 5,794 test images of 200 bird species."""
    require(path, "images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt", "images")
    classes = [re.sub(r"^\d+\.", "", name) for _, name in _table(path / "classes.txt", 2)]
    labels = dict(_table(path / "image_class_labels.txt", 2))
    is_train = dict(_table(path / "train_test_split.txt", 2))
    splits = {"1": ([], []), "0": ([], [])}
    for image_id, relative in _table(path / "images.txt", 2):
        if image_id not in labels or is_train.get(image_id) not in splits:
            raise DatasetError(f"Image {image_id} of {path / 'images.txt'} has no class in image_class_labels.txt "
                               "or no 0/1 flag in train_test_split.txt; the files are damaged.")
        paths, ys = splits[is_train[image_id]]
        paths.append(str(path / "images" / relative))
        ys.append(int(labels[image_id]) - 1)
    return _file_splits("cub200", path, splits["1"], splits["0"], classes)


# --------------------------------------------------------------------------- Stanford Dogs

def _loadmat(file: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(file)
    except Exception as err:  # scipy raises many kinds (MatReadError, IndexError, ValueError...) on bad files
        message = f"{file} could not be read as a MATLAB file ({err}); take it again from lists.tar."
        raise DatasetError(message) from None


@register_dataset("stanford_dogs", ("stanford_dogs", "StanfordDogs", "stanford-dogs"),
                  "a folder with Images/<wnid>-<breed>/*.jpg (from images.tar) and train_list.mat / "
                  "test_list.mat (from lists.tar; 'file_list' and 1-based 'labels')")
def read_stanford_dogs(path: Path) -> DatasetSplits:
    """The official split: 12,000 train / 8,580 test images of 120 breeds (sorted wnid folders)."""
    require(path, "Images", "train_list.mat", "test_list.mat")
    folders = _subfolders(path / "Images")

    def split(list_name: str):
        file = path / list_name
        mat = _loadmat(file)
        if "file_list" not in mat or "labels" not in mat:
            raise DatasetError(f"{file} has no 'file_list' and 'labels'; it is not a list from lists.tar.")
        names = [str(np.asarray(cell).ravel()[0]) for cell in np.asarray(mat["file_list"]).ravel()]
        labels = np.asarray(mat["labels"]).ravel().astype(np.int64) - 1
        if len(names) != len(labels):
            raise DatasetError(f"{file} has {len(names)} files but {len(labels)} labels; the file is damaged.")
        check_labels(torch.from_numpy(labels), len(folders), file)
        for name, label in zip(names, labels.tolist()):
            if Path(name).parts[0] != folders[label]:
                raise DatasetError(f"{file} labels {name} as class {label + 1}, but folder {label + 1} of "
                                   f"{path / 'Images'} is {folders[label]}; the lists and images do not match.")
        return [str(path / "Images" / n) for n in names], labels.tolist()

    classes = [folder.split("-", 1)[-1] for folder in folders]
    return _file_splits("stanford_dogs", path, split("train_list.mat"), split("test_list.mat"), classes)


# --------------------------------------------------------------------------- MIT-67

@register_dataset("mit67", ("mit67", "MIT67", "indoorCVPR_09"),
                  "a folder with Images/<category>/*.jpg (from indoorCVPR_09.tar) and the official "
                  "TrainImages.txt / TestImages.txt (lines like 'kitchen/int474.jpg')")
def read_mit67(path: Path) -> DatasetSplits:
    """The official split: 80 train / 20 test images per indoor scene category (67 categories, sorted by name;
    the label of an image is its category folder)."""
    require(path, "Images", "TrainImages.txt", "TestImages.txt")
    classes = _subfolders(path / "Images")
    label_of = {c: k for k, c in enumerate(classes)}

    def split(list_name: str):
        paths, labels = [], []
        for number, line in enumerate(lines(path / list_name), start=1):
            category = line.replace("\\", "/").split("/", 1)[0]
            if category not in label_of:
                raise DatasetError(f"{path / list_name} line {number}: '{line}' is in no category folder of "
                                   f"{path / 'Images'} (label outside the {len(classes)} classes).")
            paths.append(str(path / "Images" / line))
            labels.append(label_of[category])
        return paths, labels

    return _file_splits("mit67", path, split("TrainImages.txt"), split("TestImages.txt"), classes)


# --------------------------------------------------------------------------- any class-folder tree

def _images_below(folder: Path, seen: dict[str, str]) -> list[str]:
    """Sorted image files below ``folder``, following links to folders. ``seen`` (real path -> path, shared by the
    calls of one split): a folder reached a second time (a link loop, or two links to one folder) is refused, as
    its images would be counted twice."""
    found = []
    for top, _, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            raise DatasetError(f"{top} is the folder {seen[real]} again (through a symbolic link), so its images would "
                               "be counted twice. Remove the link (a link loop, or a second link to one folder).")
        seen[real] = top
        found += [os.path.join(top, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _class_folders(folder: Path) -> tuple[list[str], list[str], list[int]]:
    """Sorted class folder names, and every image below each of them with its class index."""
    classes = _subfolders(folder)
    if not classes:
        raise DatasetError(f"{folder} has no class folders; put each class's images in {folder}/<class>/.")
    paths, labels, seen = [], [], {}
    for k, name in enumerate(classes):
        found = _images_below(folder / name, seen)
        if not found:
            raise DatasetError(f"{folder / name} holds no images (JPEG, PNG, GIF or WebP).")
        paths += found
        labels += [k] * len(found)
    return classes, paths, labels


@register_dataset("imagefolder", ("imagefolder",),
                  "a folder with train/<class>/<images> and val/<class>/<images>, the same class folders "
                  "in both (JPEG, PNG, GIF or WebP files); pass it as --data-dir")
def read_imagefolder(path: Path) -> DatasetSplits:
    """Classes numbered in sorted folder-name order, as torchvision's ImageFolder does."""
    require(path, "train", "val")
    classes, train_paths, train_labels = _class_folders(path / "train")
    val_classes, val_paths, val_labels = _class_folders(path / "val")
    if val_classes != classes:
        only_train = sorted(set(classes) - set(val_classes)) or "none"
        only_val = sorted(set(val_classes) - set(classes)) or "none"
        raise DatasetError(f"{path}: train/ and val/ hold different class folders (only in train: {only_train}; "
                           f"only in val: {only_val}). Both splits need the same class folders.")
    return _file_splits("imagefolder", path, (train_paths, train_labels), (val_paths, val_labels), classes,
                        listed=False)
