"""Loss maths shared by all methods (float32 even under autocast; see baselines.md §0).

Conventions: ``KD_T(t, s) = T² · (1/B) Σ_b KL(σ(sg(t_b)/T) ‖ σ(s_b/T))`` — teacher first, student
second, Hinton direction, "batchmean" (sum over classes, mean over the batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_prob_loss(target_probs: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KDp_T(q, s) = T² · (1/B) Σ_b Σ_k q_bk (log q_bk − log σ(s_b/T)_k)`` for a given (detached) ``q``."""
    q = target_probs.detach().float()
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    # xlogy makes 0·log 0 = 0, so one-hot or sparse targets are fine.
    kl = torch.special.xlogy(q, q) - q * log_p
    return kl.sum() / student_logits.shape[0] * temperature**2


def kd_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KD_T(teacher, student)``; the teacher is detached here."""
    q = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return kd_prob_loss(q, student_logits, temperature)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``SCE(z, q) = −(1/B) Σ_b Σ_k q_bk log σ(z_b)_k`` with a constant target ``q``."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(target_probs.detach().float() * log_p).sum() / logits.shape[0]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


def smoothed_targets(targets: torch.Tensor, num_classes: int, epsilon: float, style: str = "others") -> torch.Tensor:
    """Label-smoothing target. ``others``: 1−ε on the true class, ε/(K−1) on each other class
    (Self-KD-Lib/TF-KD form); ``uniform``: (1−ε)·1_y + ε/K (Szegedy et al.; PyTorch's label_smoothing)."""
    one_hot = F.one_hot(targets, num_classes).float()
    if style == "uniform":
        return (1 - epsilon) * one_hot + epsilon / num_classes
    return (1 - epsilon) * one_hot + epsilon / (num_classes - 1) * (1 - one_hot)


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Attention transfer map (Zagoruyko & Komodakis): L2-normalised channel mean of ``f²``, flattened per sample."""
    a = feature.float().pow(2).mean(dim=1).flatten(1)
    return F.normalize(a, dim=1)


def mixed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor,
                        lam: torch.Tensor) -> torch.Tensor:
    """Mixed-target CE of mixup/CutMix: ``λ·CE(z, y) + (1−λ)·CE(z, y_π)``."""
    return lam * cross_entropy(logits, targets) + (1 - lam) * cross_entropy(logits, targets[perm])


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


def non_target_log_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-softmax among the K−1 non-target logits of each row (target logit removed), as a (B, K) tensor
    whose target column is 0, so ``(q * out).sum(1)`` with ``q_y = 0`` sums over the non-target classes only."""
    is_target = F.one_hot(targets, logits.shape[1]).bool()
    masked = logits.float().masked_fill(is_target, float("-inf"))
    return F.log_softmax(masked, dim=1).masked_fill(is_target, 0.0)
