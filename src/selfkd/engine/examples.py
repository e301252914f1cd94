"""Prediction examples of a segmentation run: a few test images with their ground truth and the evaluated model's
predictions, kept in the run folder (``examples.npz``) for the report's side-by-side figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..atomic import AGAIN, atomic_write
from ..tasks import IGNORE_LABEL
from .step import autocast


@torch.no_grad()
def write_examples(path: Path, module: torch.nn.Module, loader, classes: list[str], device: torch.device,
                   dtype: torch.dtype | None, count: int = 4, then: str = AGAIN) -> None:
    """Predict the first ``count`` images of ``loader`` (the test loader: normalised, at the evaluation size) with
    ``module`` (the eval model) in eval mode, and write them to ``path`` with ``np.savez`` (no pickled objects):

    - ``images`` uint8 ``(N, H, W, C)``: the inputs de-normalised for display (``255·(x·std + mean)``);
    - ``masks``, ``predictions`` uint8 ``(N, H, W)``: the ground truth (IGNORE_LABEL = ignored) and the predicted
      class;
    - ``sizes`` int64 ``(N, 2)``: each example's height and width; examples of different sizes are padded
      bottom/right to the largest (image 0, mask and prediction IGNORE_LABEL);
    - ``index`` int64 ``(N,)``: their positions in the test set (the same images for every method of one seed);
    - ``classes``: the class names, a fixed-width unicode array.

    Written atomically; a failed write says why and ``then`` (what to do next).
    """
    was_training = module.training
    module.eval()
    with autocast(device, dtype):
        picked = _predict(module, loader, count)
    module.train(was_training)
    arrays = _padded(picked, classes)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: given a path, np.savez would append ".npz" to it
            np.savez(fh, **arrays)

    atomic_write(path, save, then)


def _predict(module: torch.nn.Module, loader, count: int) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(test index, uint8 image (H, W, C), mask, prediction)`` of the first ``count`` test images."""
    picked: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for batch in loader:
        take = min(count - len(picked), len(batch.images))
        images = batch.images[:take]
        out = module(images)
        logits = out[0] if isinstance(out, tuple) else out
        shown = (images.float() * loader.std.view(1, -1, 1, 1) + loader.mean.view(1, -1, 1, 1)).clamp(0, 1)
        picked += zip(batch.index[:take].tolist(), (255 * shown).round().byte().permute(0, 2, 3, 1).cpu(),
                      batch.targets[:take].byte().cpu(), logits.argmax(1).byte().cpu())
        if len(picked) == count:
            break
    return picked


def _padded(picked: list, classes: list[str]) -> dict[str, np.ndarray]:
    """The arrays of examples.npz: examples padded bottom/right to the largest (image 0, labels IGNORE_LABEL)."""
    n, channels = len(picked), picked[0][1].shape[-1]
    h, w = max(p[2].shape[0] for p in picked), max(p[2].shape[1] for p in picked)
    arrays = {"images": np.zeros((n, h, w, channels), np.uint8), "masks": np.full((n, h, w), IGNORE_LABEL, np.uint8),
              "predictions": np.full((n, h, w), IGNORE_LABEL, np.uint8), "sizes": np.zeros((n, 2), np.int64),
              "index": np.array([p[0] for p in picked], np.int64), "classes": np.array(classes, dtype=str)}
    for i, (_, image, mask, prediction) in enumerate(picked):
        rows, cols = mask.shape
        arrays["images"][i, :rows, :cols] = image.numpy()
        arrays["masks"][i, :rows, :cols] = mask.numpy()
        arrays["predictions"][i, :rows, :cols] = prediction.numpy()
        arrays["sizes"][i] = rows, cols
    return arrays
