"""Per-sample transforms of image files (torchvision v2 on uint8 tensors), run by loader workers: the
classification crops and flips of a :class:`~selfkd.data.loaders.AugmentSpec`, and the joint image-and-mask
transform of segmentation files."""
from __future__ import annotations

import torch

from ..tasks import IGNORE_LABEL
from .loaders import AugmentSpec


def build_transform(spec: AugmentSpec, train: bool):
    """torchvision v2 transforms on uint8 ``(3, H, W)`` tensors, ending at ``spec.size`` x ``spec.size``."""
    from torchvision.transforms import v2

    size = spec.size
    if not train or spec.kind == "none":
        return v2.Compose([v2.Resize(spec.test_resize or round(size * 256 / 224), antialias=True),
                           v2.CenterCrop(size)])
    if spec.kind == "rrc_flip":
        return v2.Compose([v2.RandomResizedCrop(size, scale=spec.scale, antialias=True), v2.RandomHorizontalFlip()])
    crop = v2.RandomCrop(size, padding=spec.padding) if spec.kind == "crop_flip" else v2.CenterCrop(size)
    return v2.Compose([v2.Resize(size, antialias=True), crop, v2.RandomHorizontalFlip()])


def build_seg_transform(train: bool, crop_size: int = 512, short_side: tuple[int, int] = (256, 1024),
                        pad_label: int = IGNORE_LABEL, blur: bool = True, eval_size: int | None = None):
    """Joint transform of a uint8 image ``(3, H, W)`` and mask ``(H, W)`` (torchvision v2; masks resampled
    nearest). Returns ``f(image, mask) -> (image, mask)``.

    Training (FRSKD's VOC recipe): horizontal flip, random short side in ``short_side``, padding to
    ``crop_size`` where smaller (image 0, mask ``pad_label``; 255 = ignored, the official code pads masks with
    0 = background), random ``crop_size`` crop, Gaussian blur (σ ∈ (0, 1]) of the image with p = 0.5. torchvision
    pads both sides, so a small image lands anywhere in the crop (the official code pads bottom/right only).
    Evaluation: the original resolution, or ``eval_size``² (the official, aspect-distorting resize).
    """
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    if train:
        steps = [v2.RandomHorizontalFlip(), v2.RandomResize(short_side[0], short_side[1] + 1, antialias=True),
                 v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: pad_label})]
        if blur:
            steps.append(v2.RandomApply([v2.GaussianBlur(7, sigma=(0.01, 1.0))], p=0.5))
    else:
        steps = [v2.Resize((eval_size, eval_size), antialias=True) if eval_size else v2.Identity()]
    compose = v2.Compose(steps)

    def transform(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = compose(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    return transform
