"""Batch transforms that methods apply inside the training step: mixing (mixup, CutMix) and the
rotations of self-supervised label augmentation (SLA). Randomness comes from the images' device's
default generator, with no host sync."""
from __future__ import annotations

import torch

from ...errors import ConfigError


def sample_beta(alpha: float, device: torch.device) -> torch.Tensor:
    """One draw of ``λ ~ Beta(α, α)``: a 0-dim float32 tensor on ``device``, from that device's default
    generator, without a host sync."""
    concentration = torch.full((), float(alpha), device=device)
    return torch.distributions.Beta(concentration, concentration, validate_args=False).sample()


def mixup(images: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): ``x̃ = λx + (1−λ)x_π``, one ``λ ~ Beta(α, α)`` per batch and a random
    permutation ``π``. Returns ``(x̃, π, λ)``."""
    lam = sample_beta(alpha, images.device)
    perm = torch.randperm(images.shape[0], device=images.device)
    return lam.to(images.dtype) * images + (1 - lam).to(images.dtype) * images[perm], perm, lam


def cutmix(images: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019): paste the box of ``x_π`` centred at a uniform pixel with sides
    ``⌊H·√(1−λ₀)⌋ × ⌊W·√(1−λ₀)⌋`` (half-sides rounded down, clipped to the image),
    ``λ₀ ~ Beta(α, α)``.
    Returns ``(x̃, π, λ)`` with ``λ = 1 − box area / image area`` after clipping."""
    height, width = images.shape[-2:]
    device = images.device
    ratio = (1 - sample_beta(alpha, device)).sqrt()
    perm = torch.randperm(images.shape[0], device=device)

    def span(size: int) -> torch.Tensor:
        half = torch.floor(size * ratio) // 2
        centre = torch.randint(size, (), device=device)
        pos = torch.arange(size, device=device)
        return (pos >= (centre - half).clamp(0, size)) & (pos < (centre + half).clamp(0, size))

    box = span(height)[:, None] & span(width)[None, :]
    lam = 1 - box.float().mean()
    return torch.where(box, images[perm], images), perm, lam


def rotate_batch(images: torch.Tensor, rotations: int = 4) -> torch.Tensor:
    """Each image rotated by 0°, 90°, … in the H–W plane, interleaved per sample:
    ``[x_1^0, x_1^1, …, x_2^0, …]`` (``rotations·B`` images). Needs square images."""
    if images.shape[-1] != images.shape[-2]:
        raise ConfigError(f"Rotating images by 90° (SLA) needs square images; got {tuple(images.shape[-2:])}. "
                          "Use a square crop (data.image_size) or a method without rotations.")
    return torch.stack([torch.rot90(images, r, (2, 3)) for r in range(rotations)], dim=1).flatten(0, 1)


def rotation_targets(targets: torch.Tensor, rotations: int = 4) -> torch.Tensor:
    """Joint labels ``y·M + r`` of :func:`rotate_batch`'s rows (class-major)."""
    return (targets[:, None] * rotations + torch.arange(rotations, device=targets.device)).flatten()


def aggregate_rotations(joint_logits: torch.Tensor, rotations: int = 4) -> torch.Tensor:
    """SLA aggregation ``a_{b,k} = (1/M) Σ_r g_{(b,r), k·M+r}``: each rotation's own slot of the joint logits,
    averaged over the ``M`` rotations. ``joint_logits`` is ``(M·B, M·K)`` in :func:`rotate_batch` order."""
    rows, cols = joint_logits.shape
    g = joint_logits.view(rows // rotations, rotations, cols // rotations, rotations)  # (b, r, k, r')
    return torch.diagonal(g, dim1=1, dim2=3).mean(dim=-1)
