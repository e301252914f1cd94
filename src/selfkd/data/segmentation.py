"""Segmentation datasets (masks: one uint8 class index per pixel, 255 = ignore) and their joint transforms.

- ``voc``: PASCAL VOC 2007/2012 in the VOCdevkit layout; ``seg_folder``: any ``images/`` + ``masks/`` tree.
  Both are file lists (:class:`SegmentationFiles`): loader workers decode each pair with :func:`read_pair`
  (which checks it) and transform it with :func:`build_seg_transform`. Split lists are checked when read.
- ``fmnist_scenes``: scenes composed from Fashion-MNIST items, held in memory (:class:`ImageTensors` with
  ``(N, H, W)`` masks) and augmented on the device by :func:`selfkd.data.augment.seg_scale_crop_flip`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field

from ..errors import ConfigError, DatasetError
from ..memory import check_fits
from ..registry import NonNegativeInt, PositiveInt
from ..tasks import IGNORE_LABEL
from .caches import cache_dir, fingerprint, load_cache, save_cache
from .datasets import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSplits,
    ImageTensors,
    MissingFiles,
    SegmentationFiles,
    check_exist,
    lines,
    mask_problem,
    register_dataset,
    require,
)
from .small_images import FASHION_CLASSES, idx_file, read_fashion_mnist

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


# --------------------------------------------------------------------------- decoding (in loader workers)


# --------------------------------------------------------------------------- file datasets

def _listed_pairs(list_file: Path, where: Path, image_of, mask_of) -> tuple[list[str], list[str]]:
    """Image and mask paths of every id in ``list_file``; refuses a list that names a missing file (of the dataset
    folder ``where``)."""
    ids = lines(list_file)
    if not ids:
        raise DatasetError(f"{list_file} lists no images.")
    images, masks = [str(image_of(i)) for i in ids], [str(mask_of(i)) for i in ids]
    check_exist([p for pair in zip(images, masks) for p in pair], where)
    return images, masks


def _seg_splits(name: str, train: tuple[list[str], list[str]], test: tuple[list[str], list[str]],
                classes: list[str], own_val: torch.Tensor | None = None) -> DatasetSplits:
    return DatasetSplits(name, SegmentationFiles(*train), SegmentationFiles(*test), len(classes), 3, IMAGENET_MEAN,
                         IMAGENET_STD, 512, "seg_voc", classes, own_val=own_val)


@register_dataset("voc", ("VOCdevkit",),
                  "a 'VOCdevkit' folder with VOC2012/ (and VOC2007/ for split=voc0712), each holding "
                  "JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNGs: index = class, 255 = boundary) "
                  "and ImageSets/Segmentation/{train,val,trainval}.txt (VOC2007 also test.txt)",
                  task="segmentation")
def read_voc(path: Path, split: Literal["voc0712", "voc2012"] = "voc0712") -> DatasetSplits:
    """PASCAL VOC segmentation, 21 classes. ``split="voc0712"`` (as FRSKD's code): VOC2007 + VOC2012 trainval for
    training, VOC2007 test for evaluation, and VOC2012 val (part of that training set) as its own validation split
    (``data.val_split: dataset``: training then on VOC2007 trainval + VOC2012 train); ``split="voc2012"``: VOC2012
    train / VOC2012 val (without SBD), with no validation split of its own (its val is the test split)."""

    def part(year: int, name: str):
        root = path / f"VOC{year}"
        require(root, "JPEGImages", "SegmentationClass", f"ImageSets/Segmentation/{name}.txt")
        return _listed_pairs(root / "ImageSets" / "Segmentation" / f"{name}.txt", root,
                             lambda i: root / "JPEGImages" / f"{i}.jpg",
                             lambda i: root / "SegmentationClass" / f"{i}.png")

    if split == "voc0712":
        (images07, masks07), (images12, masks12) = part(2007, "trainval"), part(2012, "trainval")
        train, test = (images07 + images12, masks07 + masks12), part(2007, "test")
        listed = path / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
        val = {str(path / "VOC2012" / "JPEGImages" / f"{i}.jpg") for i in lines(listed)} if listed.is_file() else set()
        rows = [len(images07) + i for i, image in enumerate(images12) if image in val]
        return _seg_splits("voc", train, test, VOC_CLASSES, torch.tensor(rows, dtype=torch.long) if rows else None)
    return _seg_splits("voc", part(2012, "train"), part(2012, "val"), VOC_CLASSES)


@register_dataset("seg_folder", ("seg_folder",),
                  "a folder with images/ (JPEG, PNG, GIF or WebP), masks/<image name>.png (label PNGs: pixel value "
                  "= class index, 255 = unlabelled), train.txt and val.txt (or test.txt) listing image names, and "
                  "classes.txt (one class name per line) unless num_classes is given; pass it as --data-dir",
                  task="segmentation")
def read_seg_folder(path: Path, num_classes: PositiveInt | None = None) -> DatasetSplits:
    """Lists name images with or without their extension; the evaluation list is val.txt, else test.txt."""
    require(path, "images", "masks", "train.txt")
    eval_list = next((path / f for f in ("val.txt", "test.txt") if (path / f).is_file()), None)
    if eval_list is None:
        raise MissingFiles(f"{path} has no val.txt or test.txt.")
    classes = lines(path / "classes.txt") if (path / "classes.txt").is_file() else None
    if classes == []:
        raise DatasetError(f"{path / 'classes.txt'} is empty: list the class names there (one per line, in label "
                           "order), or remove it and give the dataset option num_classes.")
    if classes is None and num_classes is None:
        raise DatasetError(f"{path} has no classes.txt: list the class names there (one per line, in label order) "
                           "or give the dataset option num_classes.")
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise DatasetError(f"{path / 'classes.txt'} names {len(classes)} classes but num_classes={num_classes}; "
                           "make them agree (or leave num_classes out).")
    classes = classes or [f"class_{k}" for k in range(num_classes)]
    if len(classes) > IGNORE_LABEL:
        raise DatasetError(f"{path} has {len(classes)} classes; label PNGs hold at most 255 (255 means unlabelled).")
    by_stem = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(path / "images"))
               if f.lower().endswith(IMAGE_EXTENSIONS)}

    def stem(entry: str) -> str:
        return os.path.splitext(entry)[0] if entry.lower().endswith(IMAGE_EXTENSIONS) else entry

    def pairs(list_file: Path):
        return _listed_pairs(list_file, path, lambda e: path / "images" / by_stem.get(stem(e), e),
                             lambda e: path / "masks" / f"{stem(e)}.png")

    return _seg_splits("seg_folder", pairs(path / "train.txt"), pairs(eval_list), classes)


# --------------------------------------------------------------------------- fmnist_scenes

SCENES_VERSION = 1  # bump when the composition changes, so old caches are not reused
MAX_ITEMS = 64  # items per scene (each is a pass over the scenes; a few cover a canvas)
SCENE_CLASSES = ["background"] + FASHION_CLASSES

class SceneLayout(NamedTuple):
    """Per scene ``n`` and slot ``j``: the item index, its size and its top-left corner; slots ``j ≥ count[n]``
    are empty. Slots are painted in order, so later items cover earlier ones."""

    count: np.ndarray  # (N,)
    item: np.ndarray  # (N, J)
    size: np.ndarray  # (N, J)
    top: np.ndarray  # (N, J)
    left: np.ndarray  # (N, J)


def scene_layout(rng: np.random.Generator, num_scenes: int, num_items: int, min_items: int, max_items: int,
                 min_size: int, max_size: int, canvas: int) -> SceneLayout:
    shape = (num_scenes, max_items)
    size = rng.integers(min_size, max_size + 1, shape)
    return SceneLayout(rng.integers(min_items, max_items + 1, num_scenes), rng.integers(0, num_items, shape), size,
                       rng.integers(0, canvas - size + 1), rng.integers(0, canvas - size + 1))


def _bilinear_taps(n_in: int, n_out: int):
    """Integer bilinear resampling taps (half-pixel centres, edges clamped): source rows ``lo``/``hi`` and their
    weights in 1/256 (summing to 256), computed exactly from ``src = ((2i + 1)·n_in − n_out) / (2·n_out)``."""
    den = 2 * n_out
    num = np.clip((2 * np.arange(n_out) + 1) * n_in - n_out, 0, (n_in - 1) * den)
    lo = num // den
    frac = ((num - lo * den) * 256 + den // 2) // den
    return lo, np.minimum(lo + 1, n_in - 1), 256 - frac, frac


def resize_items(items: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(M, h, w)`` → ``(M, size, size)``, bilinear in integer arithmetic (identical on every machine)."""
    lo, hi, w_lo, w_hi = _bilinear_taps(items.shape[1], size)
    x = items.astype(np.int32)
    x = x[:, lo, :] * w_lo[:, None] + x[:, hi, :] * w_hi[:, None]
    lo, hi, w_lo, w_hi = _bilinear_taps(items.shape[2], size)
    x = x[:, :, lo] * w_lo + x[:, :, hi] * w_hi
    return ((x + (1 << 15)) >> 16).astype(np.uint8)


def fill_holes(shapes: np.ndarray) -> np.ndarray:
    """Boolean ``(M, h, w)`` shapes with their holes filled: background not 4-connected to the border becomes
    foreground (each slice on its own)."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), bool)
    structure[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]  # no connection between slices
    labels, _ = ndimage.label(~shapes, structure)
    border = np.concatenate([labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]], axis=None)
    return ~np.isin(labels, border[border > 0])


def mark_edges(masks: np.ndarray, band: int) -> np.ndarray:
    """``masks`` with 255 wherever another label lies within ``band`` pixels (in the ``(2·band+1)²`` window, the
    border repeated): where the window's largest or smallest label is not the pixel's (separable filters: the cost
    does not grow with the band)."""
    from scipy import ndimage

    window = (1, 2 * band + 1, 2 * band + 1)
    edge = ((ndimage.maximum_filter(masks, window, mode="nearest") != masks)
            | (ndimage.minimum_filter(masks, window, mode="nearest") != masks))
    return np.where(edge, IGNORE_LABEL, masks).astype(np.uint8)


def compose_scenes(items: np.ndarray, classes: np.ndarray, layout: SceneLayout, canvas: int, threshold: int,
                   ignore_band: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paint the items of ``layout`` onto black ``canvas``² scenes: uint8 images ``(N, 1, canvas, canvas)`` and
    masks ``(N, canvas, canvas)``.

    An item (uint8 ``(h, w)``, class ``c``) is resized to its size (:func:`resize_items`); its shape is where
    its intensity exceeds ``threshold``, holes filled (:func:`fill_holes`). Inside the shape it replaces the
    image and the label (``c + 1``; 0 = background) of what was painted before. ``ignore_band > 0`` then marks
    label edges 255 (:func:`mark_edges`).
    """
    n, slots = layout.item.shape
    images = np.zeros((n, canvas, canvas), np.uint8)
    masks = np.zeros((n, canvas, canvas), np.uint8)
    for j in range(slots):
        active = layout.count > j
        for size in np.unique(layout.size[active, j]):
            scenes = np.nonzero(active & (layout.size[:, j] == size))[0]
            picked = layout.item[scenes, j]
            patch = resize_items(items[picked], int(size))
            shape = fill_holes(patch > threshold)
            rows = (layout.top[scenes, j][:, None] + np.arange(size))[:, :, None]
            cols = (layout.left[scenes, j][:, None] + np.arange(size))[:, None, :]
            at = (scenes[:, None, None], rows, cols)
            images[at] = np.where(shape, patch, images[at])
            masks[at] = np.where(shape, (classes[picked] + 1)[:, None, None], masks[at])
    if ignore_band:
        masks = mark_edges(masks, ignore_band)
    return images[:, None], masks


def _check_scene_options(train_size: int, test_size: int, canvas: int, min_items: int, max_items: int,
                         min_size: int, max_size: int, threshold: int, ignore_band: int, **_) -> None:
    """Refuse options of fmnist_scenes that contradict each other, or whose scenes do not fit in memory."""
    if min_items > max_items or min_size > max_size or max_size > canvas or threshold >= 255 or ignore_band >= canvas:
        raise ConfigError(
            f"fmnist_scenes needs min_items ≤ max_items (got {min_items}, {max_items}), min_size ≤ max_size ≤ canvas "
            f"(got {min_size}, {max_size}, {canvas}), threshold < 255 (got {threshold}) and ignore_band < canvas (got "
            f"{ignore_band}: a band as wide as the canvas leaves no pixel labelled). The defaults are 2–4 items of "
            "20–36 pixels on a 64-pixel canvas, threshold 16, no band.")
    check_fits((train_size + test_size) * (8 * canvas**2 + 40 * max_items), "fmnist_scenes with these options",
               "train_size, test_size or canvas")


@register_dataset("fmnist_scenes", ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
                  "Fashion-MNIST as for fashion_mnist (a folder 'fashion-mnist' with train-images-idx3-ubyte.gz, "
                  "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz); the scenes "
                  "are composed from it and cached",
                  task="segmentation")
def read_fmnist_scenes(path: Path, train_size: PositiveInt = 10000, test_size: PositiveInt = 2000,
                       canvas: PositiveInt = 64, min_items: PositiveInt = 2,
                       max_items: Annotated[int, Field(ge=1, le=MAX_ITEMS)] = 4,
                       min_size: PositiveInt = 20, max_size: PositiveInt = 36, threshold: NonNegativeInt = 16,
                       ignore_band: NonNegativeInt = 0, seed: NonNegativeInt = 0) -> DatasetSplits:
    """Grey ``canvas``² scenes of ``min_items..max_items`` Fashion-MNIST items, each resized to
    ``min_size..max_size`` pixels at a random place (:func:`compose_scenes`); 11 classes (background + the 10
    Fashion-MNIST classes). Training scenes use only training items, test scenes only test items. The scenes
    depend only on the options and the Fashion-MNIST files (integer maths, seeded NumPy generators) and are
    cached in ``$SELFKD_CACHE`` (default ``~/.cache/selfkd``), keyed on the options and the paths, sizes and
    modification times of the four IDX files, so that a cache hit reads nothing else.
    """
    options = dict(train_size=train_size, test_size=test_size, canvas=canvas, min_items=min_items,
                   max_items=max_items, min_size=min_size, max_size=max_size, threshold=threshold,
                   ignore_band=ignore_band, seed=seed, version=SCENES_VERSION)
    _check_scene_options(**options)
    sources = [str(idx_file(path, f"{p}-{k}").resolve()) for p in ("train", "t10k")
               for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode() + fingerprint({"idx": sources}).encode())
    file = cache_dir() / f"fmnist_scenes-{digest.hexdigest()[:16]}.npz"
    sizes = {"train": train_size, "test": test_size}
    shapes = {f"{split}_{kind}": (n, 1, canvas, canvas) if kind == "images" else (n, canvas, canvas)
              for split, n in sizes.items() for kind in ("images", "masks")}
    arrays = load_cache(file, shapes, check=lambda a: not any(
        mask_problem(torch.from_numpy(a[f"{s}_masks"]), len(SCENE_CLASSES)) for s in sizes))  # else made again
    if arrays is None:
        source = read_fashion_mnist(path)
        arrays = {}
        for number, (split, part) in enumerate((("train", source.train), ("test", source.test))):
            rng = np.random.default_rng([seed, number])
            layout = scene_layout(rng, sizes[split], len(part), min_items, max_items, min_size, max_size, canvas)
            arrays[f"{split}_images"], arrays[f"{split}_masks"] = compose_scenes(
                part.images[:, 0].numpy(), part.labels.numpy(), layout, canvas, threshold, ignore_band)
        save_cache(file, arrays, "the fmnist_scenes scenes")
    train, test = (ImageTensors(torch.from_numpy(arrays[f"{s}_images"]), torch.from_numpy(arrays[f"{s}_masks"]))
                   for s in ("train", "test"))
    counts = np.bincount(arrays["train_images"].ravel(), minlength=256)  # mean and std from the histogram, exactly
    level = np.arange(256) / 255
    mean = float((counts * level).sum() / counts.sum())
    std = float(np.sqrt((counts * (level - mean) ** 2).sum() / counts.sum()))
    return DatasetSplits("fmnist_scenes", train, test, len(SCENE_CLASSES), 1, (mean,), (std,), canvas,
                         "seg_scale_crop_flip", list(SCENE_CLASSES), padding=0)


# --------------------------------------------------------------------------- synthetic_seg

@register_dataset("synthetic_seg", (), "generated in memory; no files", task="segmentation")
def read_synthetic_segmentation(path=None, num_classes: Annotated[int, Field(ge=2)] = 4,
                                train_size: PositiveInt = 64, test_size: PositiveInt = 32,
                                image_size: PositiveInt = 32, channels: PositiveInt = 3,
                                seed: NonNegativeInt = 0) -> DatasetSplits:
    """Learnable generated scenes for tests and benchmarks: noise with 1–3 rectangles, each of a class with its
    own colour; label 0 is the background (so ``num_classes ≥ 2``), later rectangles cover earlier ones, and no
    pixel is unlabelled."""
    check_fits(image_size**2 * ((channels + 1) * (train_size + test_size) + 16 * channels * min(64, max(
        train_size, test_size))), "synthetic_seg with these options", "train_size, test_size, image_size or channels")
    gen = torch.Generator().manual_seed(seed)
    colour = torch.randn(num_classes, channels, generator=gen)

    def scenes(n):
        masks = torch.zeros(n, image_size, image_size, dtype=torch.uint8)
        ar = torch.arange(image_size)
        for _ in range(3):
            cls = torch.randint(1, num_classes, (n,), generator=gen)
            size = torch.randint(image_size // 4, image_size // 2 + 1, (n, 2), generator=gen)
            corner = (torch.rand(n, 2, generator=gen) * (image_size - size + 1)).long()
            rows = (ar >= corner[:, :1]) & (ar < corner[:, :1] + size[:, :1])
            cols = (ar >= corner[:, 1:]) & (ar < corner[:, 1:] + size[:, 1:])
            drawn = (rows[:, :, None] & cols[:, None, :]) & (torch.rand(n, 1, 1, generator=gen) < 0.8)
            masks = torch.where(drawn, cls[:, None, None].to(torch.uint8), masks)
        noise = torch.randn(n, channels, image_size, image_size, generator=gen)
        images = 128 + 60 * colour[masks.long()].permute(0, 3, 1, 2) + 25 * noise
        return images.clamp(0, 255).to(torch.uint8), masks

    def split(n):
        # In blocks, so that large scenes (a 512² benchmark) never hold all their float intermediates at once.
        parts = [scenes(min(64, n - start)) for start in range(0, n, 64)]
        return ImageTensors(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    return DatasetSplits("synthetic_seg", split(train_size), split(test_size), num_classes, channels,
                         (0.5,) * channels, (0.25,) * channels, image_size, "seg_scale_crop_flip",
                         ["background"] + [f"class_{k}" for k in range(1, num_classes)], padding=0)
