"""In-memory datasets held on the training device as uint8 and augmented there, per sample, in batches.

Labels are class indices ``(N,)``, or masks ``(N, H, W)`` for segmentation, which are augmented jointly with
their images and come out as int64 targets.
"""
from __future__ import annotations

import torch

from ..tasks import IGNORE_LABEL
from . import augment as aug
from .datasets import ImageTensors
from .loaders import AugmentSpec, Batch, DeviceLoader
from .samplers import Batches


class ResidentLoader(DeviceLoader):
    """Batches gathered from uint8 tensors held on ``device``; augmentation seeded per (seed, epoch, step, rank)."""

    def __init__(self, data: ImageTensors, sampler: Batches, device: torch.device, mean, std,
                 augment: AugmentSpec | None, views: int = 1, seed: int = 0, rank: int = 0,
                 memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__(sampler, data.labels, device, mean, std, views, memory_format)
        self.images = data.images.to(device)
        self.augment, self.seed, self.rank = augment, seed, rank
        self.gen = torch.Generator(device=device)

    def iter_from(self, step: int = 0):
        batches = list(self.sampler.iter_from(step))
        if not batches:
            return
        # One host-to-device copy per epoch instead of one per step.
        on_device = torch.cat(batches).to(self.device).split([len(b) for b in batches])
        for i, index in enumerate(on_device, start=step):
            if self.views > 1:
                index = index.repeat(self.views)
            images, targets = self._transform(self.images[index], self.labels[index], i)
            yield Batch(images, targets, index)

    def _transform(self, x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.augment
        masks = y.ndim == 3
        if a is None:
            return aug.normalize(x, self.mean, self.std, self.memory_format), y.long()
        if a.kind == "none":
            if masks:
                y = aug.resize_masks(y, a.size)
            return aug.normalize(aug.resize(x, a.size), self.mean, self.std, self.memory_format), y.long()
        self.gen.manual_seed(hash((self.seed, self.sampler.epoch, step, self.rank)) % (2**63))
        if a.kind == "seg_scale_crop_flip":
            x, y = aug.seg_scale_crop_flip(x, y, a.size, a.scale_range, True, self.gen, IGNORE_LABEL)
        elif a.kind == "rrc_flip":
            x = aug.random_resized_crop_flip(x, a.size, a.scale, True, self.gen)
        else:
            x = aug.random_crop_flip(aug.resize(x, a.size), a.padding if a.kind == "crop_flip" else 0, True, self.gen)
        return aug.normalize(x, self.mean, self.std, self.memory_format), y
