"""Batched, per-sample image augmentation on whatever device holds the images.

Inputs are uint8 ``(B, C, H, W)``; every sample gets its own random parameters drawn from the
given generator. Outputs are float; :func:`normalize` normalises them in the model's memory layout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding, fill 0) + RandomHorizontalFlip, as one gather (uint8 in, uint8 out)."""
    b, _, h, w = x.shape
    dev = x.device
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen, device=dev)
    ox = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen, device=dev)
    rows = oy + torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        mirrored = torch.rand(b, 1, generator=gen, device=dev) < 0.5
        cols = torch.where(mirrored, w - 1 - cols, cols)
    cols = ox + cols
    nhwc = x.permute(0, 2, 3, 1)
    out = nhwc[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def random_resized_crop_flip(x: torch.Tensor, size: int, scale: tuple[float, float], flip: bool,
                             gen: torch.Generator, ratio: tuple[float, float] = (3 / 4, 4 / 3),
                             tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop (torchvision's sampling: 10 tries, then a centre crop) + flip, bilinear with averaging
    when shrinking.

    Returns float in [0, 255].
    """
    b, _, h, w = x.shape
    dev = x.device
    area = h * w
    target = area * torch.empty(b, tries, device=dev).uniform_(scale[0], scale[1], generator=gen)
    log_r = torch.empty(b, tries, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1, device=dev))
    pick = first.clamp(min=0)[:, None]
    cw, ch = cw.gather(1, pick)[:, 0], ch.gather(1, pick)[:, 0]
    # Fallback (no valid try): centre crop with the ratio clamped into range.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(h * ratio[1]), h
    else:
        fw, fh = w, h
    failed = first < 0
    cw = torch.where(failed, torch.full_like(cw, fw), cw)
    ch = torch.where(failed, torch.full_like(ch, fh), ch)
    u = torch.rand(b, 2, device=dev, generator=gen)
    x0 = torch.where(failed, torch.full_like(cw, (w - fw) // 2), torch.floor(u[:, 0] * (w - cw + 1)))
    y0 = torch.where(failed, torch.full_like(ch, (h - fh) // 2), torch.floor(u[:, 1] * (h - ch + 1)))
    # roi_align averages ceil(crop/size) bilinear samples per output pixel along each axis: it smooths when the
    # crop is shrunk (as torchvision's antialiased resize does) and is plain bilinear when it is enlarged.
    boxes = torch.stack([torch.arange(b, device=dev, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    out = roi_align(x.float(), boxes, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if flip:
        out = torch.where(torch.rand(b, 1, 1, 1, device=dev, generator=gen) < 0.5, out.flip(-1), out)
    return out


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to ``size`` x ``size`` (bilinear, antialiased); identity when already that size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Label masks ``(B, H, W)`` to ``size`` x ``size`` by the nearest pixel (labels are never blended)."""
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].to(masks.dtype)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              memory_format: torch.memory_format) -> torch.Tensor:
    """uint8 or [0, 255] float -> (x/255 − mean)/std, written into a new tensor with the canonical strides of
    ``memory_format`` (the model's layout). Not ``contiguous(memory_format)``: for C = 1 a tensor with strides
    (HW, 1, W, 1) passes as contiguous, yet PyTorch then runs the whole network channels_last (and oneDNN's AVX2
    1×1 convolution backward hangs or crashes on it)."""
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=memory_format)
    return torch.div(x.float() * (1 / 255.0) - mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), out=out)


def seg_scale_crop_flip(images: torch.Tensor, masks: torch.Tensor, size: int, scale: tuple[float, float], flip: bool,
                        gen: torch.Generator, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint random scale, crop and flip of uint8 images ``(B, C, H, W)`` and masks ``(B, H, W)``, per sample.

    Each sample is scaled by ``s ~ U(scale)`` (to ``round(H·s) × round(W·s)``), a ``size × size`` window is cut
    at a random offset (a scaled image smaller than the window lands at a random place inside it) and mirrored
    with probability 0.5. Images are sampled bilinearly with 0 outside the image, masks by the nearest pixel
    with ``ignore_index`` outside. Returns float images in [0, 255] ``(B, C, size, size)`` and int64 masks.
    """
    b, _, h, w = images.shape
    dev = images.device
    s = torch.empty(b, device=dev).uniform_(scale[0], scale[1], generator=gen)
    u = torch.rand(b, 2, device=dev, generator=gen)
    ar = torch.arange(size, device=dev, dtype=torch.float32)

    def source(extent: int, draw: torch.Tensor) -> torch.Tensor:
        """(B, size) source coordinates (pixel-edge units: [0, extent) is inside) of the window's pixel centres."""
        scaled = (extent * s).round().clamp(min=1)
        span = scaled - size
        offset = span.clamp(max=0) + torch.floor(draw * (span.abs() + 1))
        return (offset[:, None] + ar + 0.5) * (extent / scaled)[:, None]

    ys, xs = source(h, u[:, 0]), source(w, u[:, 1])
    if flip:
        xs = torch.where(torch.rand(b, 1, device=dev, generator=gen) < 0.5, xs.flip(1), xs)
    inside = ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    grid = torch.stack([(2 * xs / w - 1)[:, None, :].expand(b, size, size),
                        (2 * ys / h - 1)[:, :, None].expand(b, size, size)], dim=-1)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    rows = ys.floor().long().clamp(0, h - 1)[:, :, None]
    cols = xs.floor().long().clamp(0, w - 1)[:, None, :]
    labels = masks[torch.arange(b, device=dev)[:, None, None], rows, cols].long()
    return out * inside[:, None], torch.where(inside, labels, ignore_index)
