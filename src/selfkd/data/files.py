"""Batches of image files: decoded and augmented in DataLoader worker processes.

The sampler decides the batches (one index tensor per step, as for :class:`ResidentLoader`).
Workers return uint8 crops; the main process moves them to the device and normalises there.
Every sample's random transform is seeded from ``(seed, epoch, index, view)``, so a run sees the
same images whatever the number of workers and whichever worker gets a batch, and a resumed
epoch continues with the images an uninterrupted one would have seen.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DatasetError
from . import augment as aug
from .datasets import ImageFiles, SegmentationFiles
from .decoding import decode_rgb, read_pair
from .loaders import AugmentSpec, Batch, DeviceLoader
from .samplers import Batches
from .transforms import build_seg_transform, build_transform


def sample_seed(seed: int, epoch: int, index: int, view: int) -> int:
    """A well-mixed 63-bit seed for one augmented copy of one sample."""
    words = np.random.SeedSequence([seed % 2**63, epoch, index, view]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class _Steps:
    """The batch sampler given to DataLoader: the sampler's steps from ``start``, as ``(epoch, index)`` keys."""

    def __init__(self, sampler: Batches):
        self.sampler, self.start = sampler, 0

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)

    def __iter__(self):
        epoch = self.sampler.epoch
        for index in self.sampler.iter_from(self.start):
            yield [(epoch, i) for i in index.tolist()]


class _Images(Dataset):
    """``dataset[(epoch, i)]`` = (i, uint8 ``(views, 3, size, size)``), or an error message for a bad file."""

    def __init__(self, paths: list[str], transform, views: int, seed: int, train: bool):
        self.paths, self.transform, self.views, self.seed, self.train = paths, transform, views, seed, train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, i = key
        try:
            image = decode_rgb(self.paths[i])
        except DatasetError as err:  # reported by the main process, without a worker traceback
            return i, str(err)
        if not self.train:
            return i, self.transform(image)[None]
        copies = []
        for view in range(self.views):
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i, view))  # CPU only
                copies.append(self.transform(image))
        return i, torch.stack(copies)


class _Pairs(Dataset):
    """``dataset[(epoch, i)]`` = (i, uint8 image ``(1, 3, H, W)``, uint8 mask ``(H, W)``) transformed jointly, or an
    error message for a bad pair (checked by :func:`~selfkd.data.segmentation.read_pair`)."""

    def __init__(self, data: SegmentationFiles, transform, num_classes: int, seed: int):
        self.data, self.transform, self.num_classes, self.seed = data, transform, num_classes, seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        epoch, i = key
        try:
            image, mask = read_pair(self.data.paths[i], self.data.mask_paths[i], self.num_classes)
        except DatasetError as err:
            return i, str(err), None
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i, 0))  # CPU only
            image, mask = self.transform(image, mask)
        return i, image[None], mask


def _collate(samples):
    """(index, images, masks or None) with images view-major: ``[x¹ of every sample; x² of every sample; ...]``."""
    for sample in samples:
        if isinstance(sample[1], str):
            return None, sample[1], None
    index = torch.tensor([s[0] for s in samples], dtype=torch.int64)
    images = torch.stack([s[1] for s in samples])  # (B, V, C, H, W)
    masks = torch.stack([s[2] for s in samples]) if len(samples[0]) == 3 else None
    return index, images.transpose(0, 1).reshape(-1, *images.shape[2:]), masks


class FileLoader(DeviceLoader):
    """Same interface as :class:`~selfkd.data.resident.ResidentLoader`, for :class:`ImageFiles` and, with their
    masks as targets, :class:`SegmentationFiles`."""

    def __init__(self, data: ImageFiles | SegmentationFiles, sampler: Batches, device: torch.device, mean, std,
                 spec: AugmentSpec, views: int = 1, workers: int = 8, train: bool = True, seed: int = 0,
                 num_classes: int = 0, memory_format: torch.memory_format = torch.contiguous_format):
        masks = isinstance(data, SegmentationFiles)
        super().__init__(sampler, None if masks else data.labels, device, mean, std, views if train else 1,
                         memory_format)
        self.steps = _Steps(sampler)
        if masks:  # without augmentation, training images are resized to size² so that they can share a batch
            plain = not train or spec.kind == "none"
            size = spec.size if train else spec.eval_size  # the plain transform's (None: original resolution)
            transform = build_seg_transform(not plain, spec.size, spec.short_side, spec.pad_label, spec.blur, size)
            dataset = _Pairs(data, transform, num_classes, seed)
        else:
            dataset = _Images(data.paths, build_transform(spec, train), self.views, seed, train)
        self.loader = DataLoader(dataset, batch_sampler=self.steps, num_workers=workers, collate_fn=_collate,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def iter_from(self, step: int = 0):
        self.steps.start = step
        for index, images, masks in self.loader:
            if index is None:
                raise DatasetError(images)
            index = index.to(self.device, non_blocking=True).repeat(self.views)
            images = images.to(self.device, non_blocking=True)
            targets = self.labels[index] if masks is None else masks.to(self.device, non_blocking=True).long()
            yield Batch(aug.normalize(images, self.mean, self.std, self.memory_format), targets, index)
