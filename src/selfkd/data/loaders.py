"""What every loader shares: the batch it yields, the augmentation it applies, and the base class.

Loaders expose ``set_epoch``, ``len`` and ``iter_from(step)`` and yield :class:`Batch` on the training device:
:class:`~selfkd.data.resident.ResidentLoader` for in-memory datasets, :class:`~selfkd.data.files.FileLoader`
for datasets read from image files.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tasks import IGNORE_LABEL
from .samplers import Batches


@dataclass
class Batch:
    images: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True)
class AugmentSpec:
    """How a loader turns stored images into a batch (see :class:`~selfkd.data.settings.DataConfig`)."""

    kind: str  # crop_flip | rrc_flip | flip | none; segmentation: seg_scale_crop_flip (in memory) | seg_voc (files)
    size: int  # training crop and test size; for segmentation the training crop only
    padding: int = 4
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area fraction
    test_resize: int | None = None
    scale_range: tuple[float, float] = (0.5, 2.0)  # seg_scale_crop_flip: the image's scale factor
    short_side: tuple[int, int] = (256, 1024)  # seg_voc: the random short side before the crop
    pad_label: int = IGNORE_LABEL  # seg_voc: the mask label of padding
    blur: bool = True  # seg_voc: Gaussian blur of the image with p = 0.5
    eval_size: int | None = None  # segmentation evaluation: None = original resolution, else resized to size²


class DeviceLoader:
    """What every loader shares: a batch sampler (steps per epoch, resumable), the labels and the
    normalisation constants on the training device, and the memory format of the model the batches feed (a batch
    in another layout costs a copy per step, or crashes PyTorch's CPU convolution backward: channels_last input to
    a contiguous model, 1×1 stride-2 convolutions on 64+ px). Subclasses implement ``iter_from(step)``."""

    def __init__(self, sampler: Batches, labels: torch.Tensor | None, device: torch.device, mean, std, views: int = 1,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.sampler, self.device, self.views, self.memory_format = sampler, device, views, memory_format
        self.labels = None if labels is None else labels.to(device)  # None: the targets come with each batch
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32)
        self.std = torch.tensor(std, device=device, dtype=torch.float32)

    @property
    def num_samples(self) -> int:
        return self.sampler.n

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, step: int = 0):
        raise NotImplementedError
