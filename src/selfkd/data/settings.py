"""The ``data`` section of a run's config: which dataset, how it is batched, augmented and normalised.

Defined in the data layer, which reads it; :mod:`selfkd.config` includes it in the run's schema. A ``None`` setting
means "the dataset's usual one": :func:`resolve_data` decides them all, in one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from ..tasks import IGNORE_LABEL, TASKS


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    dataset: str = "cifar100"
    data_dir: str | None = Field(None, min_length=1)  # only there when given (datasets.load_dataset)
    options: dict[str, Any] = Field(default_factory=dict, description="reader options, e.g. synthetic sizes")
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 500
    # None: the dataset's usual one. Segmentation: seg_scale_crop_flip (in memory) or seg_voc (files).
    augment: Literal["crop_flip", "rrc_flip", "flip", "none", "seg_scale_crop_flip", "seg_voc"] | None = None
    image_size: PositiveInt | None = None  # training crop / classification test size; None: the dataset's usual one
    padding: NonNegativeInt | None = None  # crop padding; None: the dataset's usual one (4 for CIFAR)
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    test_resize: PositiveInt | None = None  # file datasets: resize before the centre crop (e.g. 256 for 224)
    # Segmentation (masks are transformed with their images):
    scale_range: tuple[PositiveFloat, PositiveFloat] = (0.5, 2.0)  # seg_scale_crop_flip: random scale factor
    short_side: tuple[PositiveInt, PositiveInt] = (256, 1024)  # seg_voc: random short side before the crop
    pad_label: int = Field(IGNORE_LABEL, ge=0, le=255)  # seg_voc: mask label of padding (FRSKD's code: 0 = background)
    blur: bool = True  # seg_voc: Gaussian blur of the image with p = 0.5
    eval_size: PositiveInt | None = None  # evaluation: None = original resolution; FRSKD's code resizes to 512²
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # Validation images held out of the training set (data/holdout.py): a count, a fraction of the dataset's training
    # set, or "dataset" (its own validation split, where its reader gives one); drawn with val_seed, not the run's
    # seed, before train_subset draws from the rest.
    val_split: int | float | Literal["dataset"] | None = None
    val_seed: NonNegativeInt = 0
    train_subset: PositiveInt | None = None  # first N images of a fixed shuffle (by the run's seed), for quick runs
    test_subset: PositiveInt | None = None
    loader: Literal["auto", "resident", "workers"] = "auto"
    workers: NonNegativeInt = 8

    @field_validator("rrc_scale", "scale_range", "short_side")
    @classmethod
    def _ordered(cls, value, info):
        low, high = value
        top = 1 if info.field_name == "rrc_scale" else math.inf  # rrc_scale: fractions of the image's area
        if not 0 < low <= high <= top:
            raise ValueError(f"must be [low, high] with 0 < low <= high{' <= 1' if top == 1 else ''}")
        return value

    @field_validator("val_split", mode="before")
    @classmethod
    def _split(cls, value):
        """A count is an int >= 1 and a fraction a float strictly between 0 and 1 (1.0 is neither; true is no count)."""
        count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if value is None or value == "dataset" or count or (type(value) is float and 0 < value < 1):
            return value
        raise ValueError("must be a number of images (an integer, at least 1), a fraction of the training set "
                         "strictly between 0 and 1, or dataset (the dataset's own validation split)")

    @field_validator("std")
    @classmethod
    def _positive(cls, value):
        if value is not None and min(value, default=1) <= 0:
            raise ValueError("every value must be > 0 (images are divided by it)")
        return value


@dataclass(frozen=True)
class Preprocessing:
    """What pretrained weights were trained with: the normalisation and the classification crop (None: unknown)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int | None = None


def resolve_data(cfg: DataConfig, splits, weights: Preprocessing | None = None) -> DataConfig:
    """``cfg`` with every dataset default decided for ``splits`` (a :class:`~selfkd.data.DatasetSplits`): the
    augmentation, image size, crop padding, mean and std the config leaves to the dataset. The one place these are
    settled (as timm's ``resolve_data_config``); resolving a resolved config changes nothing.

    ``weights``: the preprocessing of the pretrained weights the run starts from, which comes before the dataset's
    where it fits: its mean and std when they have the dataset's number of channels (a first conv adapted to other
    channels keeps the dataset's), its crop size for classification images read from files (a segmentation crop
    belongs to the scenes, and small in-memory images keep their own size)."""
    fits = weights is not None and len(weights.mean) == splits.in_channels
    mean, std = (weights.mean, weights.std) if fits else (splits.mean, splits.std)
    crops = weights is not None and weights.image_size and not splits.in_memory and not TASKS[splits.task].dense
    return cfg.model_copy(update={
        "augment": cfg.augment or splits.augment,
        "image_size": cfg.image_size or (weights.image_size if crops else splits.image_size),
        "padding": splits.padding if cfg.padding is None else cfg.padding,
        "mean": tuple(cfg.mean or mean), "std": tuple(cfg.std or std)})
