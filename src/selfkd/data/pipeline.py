"""From a dataset and a method's :class:`DataNeeds` to batches on the training device.

In-memory datasets stay on the device as uint8 and are augmented there, per sample, batched
(:class:`ResidentLoader`); file datasets go through DataLoader workers (:mod:`selfkd.data.files`).
Both expose ``set_epoch``, ``len`` and ``iter_from(step)`` and yield :class:`Batch` on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DataConfig
from ..errors import ConfigError
from ..methods.base import DataNeeds
from . import augment as aug
from .datasets import DatasetSplits, ImageFiles, ImageTensors
from .samplers import Batches, ClassPartnerBatches


@dataclass
class Batch:
    images: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True)
class AugmentSpec:
    kind: str  # crop_flip | rrc_flip | flip | none
    size: int
    padding: int = 4
    scale: tuple[float, float] = (0.08, 1.0)
    test_resize: int | None = None


class DeviceLoader:
    """What every loader shares: a batch sampler (steps per epoch, resumable), the labels and the
    normalisation constants on the training device. Subclasses implement ``iter_from(step)``."""

    def __init__(self, sampler: Batches, labels: torch.Tensor, device: torch.device, mean, std, views: int = 1):
        self.sampler, self.device, self.views = sampler, device, views
        self.labels = labels.to(device)
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32)
        self.std = torch.tensor(std, device=device, dtype=torch.float32)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, step: int = 0):
        raise NotImplementedError


class ResidentLoader(DeviceLoader):
    """Batches gathered from uint8 tensors held on ``device``; augmentation seeded per (seed, epoch, step, rank)."""

    def __init__(self, data: ImageTensors, sampler: Batches, device: torch.device, mean, std,
                 augment: AugmentSpec | None, views: int = 1, seed: int = 0, rank: int = 0):
        super().__init__(sampler, data.labels, device, mean, std, views)
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
            yield Batch(self._transform(self.images[index], i), self.labels[index], index)

    def _transform(self, x: torch.Tensor, step: int) -> torch.Tensor:
        a = self.augment
        if a is None:
            return aug.normalize(x, self.mean, self.std)
        if a.kind == "none":
            return aug.normalize(aug.resize(x, a.size), self.mean, self.std)
        self.gen.manual_seed(hash((self.seed, self.sampler.epoch, step, self.rank)) % (2**63))
        if a.kind == "rrc_flip":
            x = aug.random_resized_crop_flip(x, a.size, a.scale, True, self.gen)
        else:
            x = aug.random_crop_flip(aug.resize(x, a.size), a.padding if a.kind == "crop_flip" else 0, True, self.gen)
        return aug.normalize(x, self.mean, self.std)


def subset(data: ImageTensors | ImageFiles, n: int | None, seed: int):
    """The first ``n`` samples of a fixed shuffle (all when ``n`` is None or too large)."""
    if n is None or n >= len(data):
        return data
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(data, ImageTensors):
        return ImageTensors(data.images[keep], data.labels[keep])
    return ImageFiles([data.paths[i] for i in keep.tolist()], data.labels[keep])


def train_sampler(labels: torch.Tensor, batch_size: int, needs: DataNeeds, seed: int, rank: int, world: int) -> Batches:
    if needs.class_partners:
        anchors = batch_size // (needs.class_partners + 1) if needs.partners_in_batch else batch_size
        return ClassPartnerBatches(labels, anchors, needs.class_partners, seed, rank, world,
                                   exclude_self=needs.exclude_self, replace=needs.partners_replace)
    return Batches(len(labels), batch_size, seed, rank, world)


def _spec_and_norm(splits: DatasetSplits, cfg: DataConfig):
    padding = splits.padding if cfg.padding is None else cfg.padding
    spec = AugmentSpec(cfg.augment or splits.augment, cfg.image_size or splits.image_size, padding,
                       tuple(cfg.rrc_scale), cfg.test_resize)
    mean, std = cfg.mean or splits.mean, cfg.std or splits.std
    if len(mean) != splits.in_channels or len(std) != splits.in_channels:
        raise ConfigError(f"data.mean/std need {splits.in_channels} values for {splits.name}, got {mean} / {std}.")
    return spec, mean, std


def _resident(data, cfg: DataConfig, name: str) -> bool:
    if cfg.loader == "resident" and not isinstance(data, ImageTensors):
        raise ConfigError(f"data.loader=resident needs an in-memory dataset; {name} is read from files.")
    return cfg.loader == "resident" or (cfg.loader == "auto" and isinstance(data, ImageTensors))


def build_train_loader(splits: DatasetSplits, cfg: DataConfig, needs: DataNeeds, device: torch.device,
                       seed: int = 0, rank: int = 0, world: int = 1):
    train = subset(splits.train, cfg.train_subset, seed)
    spec, mean, std = _spec_and_norm(splits, cfg)
    sampler = train_sampler(train.labels, cfg.batch_size, needs, seed, rank, world)
    if _resident(train, cfg, splits.name):
        return ResidentLoader(train, sampler, device, mean, std, spec, needs.views, seed, rank)
    from .files import FileLoader

    return FileLoader(train, sampler, device, mean, std, spec, needs.views, cfg.workers, train=True, seed=seed)


def build_test_loader(splits: DatasetSplits, cfg: DataConfig, device: torch.device, seed: int = 0,
                      rank: int = 0, world: int = 1):
    """The test split for this rank: samples rank, rank+world, ... (no padding, no augmentation)."""
    test = subset(splits.test, cfg.test_subset, seed)
    spec, mean, std = _spec_and_norm(splits, cfg)
    sampler = ShardedSequential(len(test), cfg.eval_batch_size, rank, world)
    if _resident(test, cfg, splits.name):
        test_spec = AugmentSpec("none", spec.size) if spec.size != test.images.shape[-1] else None
        return ResidentLoader(test, sampler, device, mean, std, test_spec, 1, seed, rank)
    from .files import FileLoader

    return FileLoader(test, sampler, device, mean, std, spec, 1, cfg.workers, train=False, seed=seed)


class ShardedSequential(Batches):
    """Evaluation order: rank ``r`` takes samples ``r, r+world, ...`` in batches, no padding, no shuffle."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        super().__init__(n, batch_size * world, 0, rank, world, shuffle=False)

    def _shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[self.rank::self.world]
