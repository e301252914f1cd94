"""Decoding image and mask files into uint8 tensors, refusing damaged or mismatched ones with a message that
names the file (readers and loader workers call these)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from ..tasks import IGNORE_LABEL


def decode_rgb(path: str) -> torch.Tensor:
    """An image file (JPEG, PNG, GIF, WebP; grayscale, CMYK, 16-bit or with alpha) as uint8 RGB ``(3, H, W)``;
    the first frame of an animated GIF."""
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2.functional import to_dtype

    try:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        return to_dtype(image[0] if image.ndim == 4 else image, torch.uint8, scale=True)
    except (RuntimeError, OSError, ValueError) as err:
        reason = re.sub(r"^[^,]*, \S+:\d+, ", "", str(err).strip())  # drop the C++ source location
        raise DatasetError(
            f"Could not read the image {path}: {reason}. The file is missing, corrupt or not an image; "
            "re-download or re-extract the dataset."
        ) from None


MASK_MODES = ("P", "L", "1", "I", "I;16")  # single-channel PNG modes whose pixel values are class indices

def read_mask(path: str | Path, num_classes: int) -> torch.Tensor:
    """A label PNG (palette or greyscale: the pixel value is the class index, 255 = ignore) as uint8 ``(H, W)``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.asarray(image) if mode in MASK_MODES else None
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports damaged PNGs with all three
        raise DatasetError(f"Could not read the mask {path}: {err}. The file is missing, corrupt or not a PNG; "
                           "re-extract the dataset.") from None
    if values is None:
        raise DatasetError(f"The mask {path} is a {mode} image; a mask must be a single-channel PNG (palette or "
                           "greyscale) whose pixel values are class indices, 255 for unlabelled pixels.")
    bad = (values >= num_classes) & (values != IGNORE_LABEL) | (values < 0)
    if bad.any():
        found = ", ".join(str(v) for v in np.unique(values[bad])[:5])
        raise DatasetError(f"The mask {path} has label(s) {found}, but the dataset has {num_classes} classes "
                           f"(labels 0..{num_classes - 1}, and 255 for unlabelled pixels). The mask is of another "
                           "dataset, or the number of classes is wrong.")
    return torch.from_numpy(values.astype(np.uint8))

def read_pair(image_path: str, mask_path: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB image ``(3, H, W)`` and its mask ``(H, W)``; refuses a mask whose size is not the image's."""
    image, mask = decode_rgb(image_path), read_mask(mask_path, num_classes)
    if image.shape[1:] != mask.shape:
        raise DatasetError(f"The mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} pixels but its image "
                           f"{image_path} is {image.shape[2]}x{image.shape[1]}; every mask must label its image "
                           "pixel for pixel.")
    return image, mask
