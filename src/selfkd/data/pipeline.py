"""From a dataset, the data settings and a method's :class:`DataNeeds` to a loader on the training device.

In-memory datasets stay on the device as uint8 and are augmented there, per sample, batched
(:mod:`selfkd.data.resident`); file datasets go through DataLoader workers (:mod:`selfkd.data.files`).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..tasks import IGNORE_LABEL, TASKS
from .datasets import DatasetSplits, ImageTensors, SegmentationFiles
from .files import FileLoader
from .holdout import subset, training_set, validation_set
from .loaders import AugmentSpec
from .needs import DataNeeds
from .resident import ResidentLoader
from .samplers import Batches, ClassPartnerBatches, ShardedSequential
from .settings import DataConfig, resolve_data


def train_sampler(labels: torch.Tensor | None, batch_size: int, needs: DataNeeds, seed: int, rank: int, world: int,
                  n: int | None = None) -> Batches:
    """The batches a method needs: class-partnered (from ``labels``) or a plain shuffle of ``n`` samples (default:
    one per label)."""
    if needs.class_partners:
        anchors = batch_size // (needs.class_partners + 1) if needs.partners_in_batch else batch_size
        return ClassPartnerBatches(labels, anchors, needs.class_partners, seed, rank, world,
                                   exclude_self=needs.exclude_self, replace=needs.partners_replace,
                                   min_batch=needs.min_batch)
    return Batches(len(labels) if n is None else n, batch_size, seed, rank, world, min_batch=needs.min_batch)


def _spec(splits: DatasetSplits, cfg: DataConfig, resident: bool) -> AugmentSpec:
    """The augmentation of ``cfg`` (resolved for ``splits``), checked against what the task's data can take."""
    spec = AugmentSpec(cfg.augment, cfg.image_size, cfg.padding, tuple(cfg.rrc_scale), cfg.test_resize,
                       tuple(cfg.scale_range), tuple(cfg.short_side), cfg.pad_label, cfg.blur, cfg.eval_size)
    kinds = TASKS[splits.task].augments[resident]
    if spec.kind not in kinds:
        held = "held in memory" if resident else "read from files"
        raise ConfigError(f"data.augment={spec.kind} does not fit {splits.name}, a {splits.task} dataset {held}; "
                          f"use {', '.join(kinds)}.")
    k = splits.num_classes
    if TASKS[splits.task].dense and cfg.pad_label not in (*range(k), IGNORE_LABEL):
        raise ConfigError(f"data.pad_label={cfg.pad_label} is no label of {splits.name}, whose classes are 0..{k - 1} "
                          f"({IGNORE_LABEL}: unlabelled); padded pixels would be trained as a class that does not "
                          f"exist. Use {IGNORE_LABEL} (padding left out of the loss) or a class below {k}.")
    if len(cfg.mean) != splits.in_channels or len(cfg.std) != splits.in_channels:
        raise ConfigError(f"data.mean/std need {splits.in_channels} values for {splits.name}, got {cfg.mean} / "
                          f"{cfg.std}.")
    return spec


def _resident(data, cfg: DataConfig, name: str) -> bool:
    """Whether ``data`` is served from memory on the device (else by DataLoader workers from files)."""
    in_memory = isinstance(data, ImageTensors)
    if cfg.loader != "auto" and (cfg.loader == "resident") != in_memory:
        held = ("held in memory (data.loader: resident or auto)" if in_memory
                else "read from files (data.loader: workers or auto)")
        raise ConfigError(f"data.loader={cfg.loader} does not fit {name}, which is {held}.")
    return in_memory


def build_train_loader(splits: DatasetSplits, cfg: DataConfig, needs: DataNeeds, device: torch.device,
                       seed: int = 0, rank: int = 0, world: int = 1,
                       memory_format: torch.memory_format = torch.contiguous_format):
    """The training batches for this rank, in ``memory_format`` (the model's layout)."""
    cfg = resolve_data(cfg, splits)
    train = training_set(splits, cfg, seed)
    resident = _resident(train, cfg, splits.name)
    spec = _spec(splits, cfg, resident)
    if TASKS[splits.task].dense and needs.class_partners:
        raise ConfigError(f"{splits.name} is a segmentation dataset: its images have no single class, so it cannot "
                          "serve same-class partners. Use a method of the segmentation task (selfkd list methods "
                          "--task segmentation).")
    sampler = train_sampler(getattr(train, "labels", None), cfg.batch_size, needs, seed, rank, world, len(train))
    if resident:
        return ResidentLoader(train, sampler, device, cfg.mean, cfg.std, spec, needs.views, seed, rank, memory_format)
    return FileLoader(train, sampler, device, cfg.mean, cfg.std, spec, needs.views, cfg.workers, train=True, seed=seed,
                      num_classes=splits.num_classes, memory_format=memory_format)


def build_test_loader(splits: DatasetSplits, cfg: DataConfig, device: torch.device, seed: int = 0,
                      rank: int = 0, world: int = 1, memory_format: torch.memory_format = torch.contiguous_format):
    """The test split for this rank: samples rank, rank+world, ... (no padding, no augmentation), in
    ``memory_format`` (the model's layout)."""
    cfg = resolve_data(cfg, splits)
    return _eval_loader(subset(splits.test, cfg.test_subset, seed), splits, cfg, device, seed, rank, world,
                        memory_format)


def build_val_loader(splits: DatasetSplits, cfg: DataConfig, device: torch.device, seed: int = 0,
                     rank: int = 0, world: int = 1, memory_format: torch.memory_format = torch.contiguous_format):
    """The validation split (``data.val_split``, held out of the training set) for this rank, served as the test
    split is; None without one."""
    cfg = resolve_data(cfg, splits)
    val = validation_set(splits, cfg)
    return None if val is None else _eval_loader(val, splits, cfg, device, seed, rank, world, memory_format)


def _eval_loader(data, splits: DatasetSplits, cfg: DataConfig, device: torch.device, seed: int, rank: int,
                 world: int, memory_format: torch.memory_format):
    """Evaluation batches of ``data`` (``cfg`` resolved) for this rank."""
    resident = _resident(data, cfg, splits.name)
    spec = _spec(splits, cfg, resident)
    batch_size = cfg.eval_batch_size
    if isinstance(data, SegmentationFiles) and spec.eval_size is None:
        batch_size = 1  # evaluated at their original resolution, images of different sizes cannot share a batch
    sampler = ShardedSequential(len(data), batch_size, rank, world)
    if resident:  # dense targets: the original resolution unless eval_size is set (as for files)
        size = (spec.eval_size or data.images.shape[-1]) if TASKS[splits.task].dense else spec.size
        eval_spec = AugmentSpec("none", size) if size != data.images.shape[-1] else None
        return ResidentLoader(data, sampler, device, cfg.mean, cfg.std, eval_spec, 1, seed, rank, memory_format)
    return FileLoader(data, sampler, device, cfg.mean, cfg.std, spec, 1, cfg.workers, train=False, seed=seed,
                      num_classes=splits.num_classes, memory_format=memory_format)
