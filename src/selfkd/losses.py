"""Loss maths shared by all methods, computed in float32 even under autocast (float64 inputs stay float64).

Conventions: ``KD_T(t, s) = T² · (1/B) Σ_b KL(σ(sg(t_b)/T) ‖ σ(s_b/T))`` — teacher first, student
second, Hinton direction, "batchmean" (sum over classes, mean over the batch).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is in a lower precision (autocast's bf16/fp16); float32 and float64 stay as they are,
    so a method run in float64 (the fidelity tests) computes its losses in float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def kl_per_position(target_probs: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``Σ_k q_k (log q_k − log σ(s/T)_k)`` over the class dim (1) at each position, for a given (detached) ``q``:
    shape ``(B,)`` for ``(B, K)`` inputs, ``(B, H, W)`` for ``(B, K, H, W)``."""
    q = upcast(target_probs.detach())
    log_p = F.log_softmax(upcast(student_logits) / temperature, dim=1)
    # xlogy makes 0·log 0 = 0, so one-hot or sparse targets are fine.
    return (torch.special.xlogy(q, q) - q * log_p).sum(dim=1)


def kd_prob_loss(target_probs: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KDp_T(q, s) = T² · (1/B) Σ_b Σ_k q_bk (log q_bk − log σ(s_b/T)_k)`` for a given (detached) ``q``."""
    kl = kl_per_position(target_probs, student_logits, temperature)
    return kl.sum() / student_logits.shape[0] * temperature**2


def kd_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KD_T(teacher, student)``; the teacher is detached here."""
    q = F.softmax(upcast(teacher_logits.detach()) / temperature, dim=1)
    return kd_prob_loss(q, student_logits, temperature)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``SCE(z, q) = −(1/B) Σ_b Σ_k q_bk log σ(z_b)_k`` with a constant target ``q``."""
    log_p = F.log_softmax(upcast(logits), dim=1)
    return -(upcast(target_probs.detach()) * log_p).sum() / logits.shape[0]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(upcast(logits), targets)


def smoothed_targets(targets: torch.Tensor, num_classes: int, epsilon: float, style: str = "others",
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Label-smoothing target. ``others``: 1−ε on the true class, ε/(K−1) on each other class
    (Self-KD-Lib/TF-KD form); ``uniform``: (1−ε)·1_y + ε/K (Szegedy et al.; PyTorch's label_smoothing)."""
    one_hot = F.one_hot(targets, num_classes).to(dtype)
    if style == "uniform":
        return (1 - epsilon) * one_hot + epsilon / num_classes
    return (1 - epsilon) * one_hot + epsilon / (num_classes - 1) * (1 - one_hot)


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Attention transfer map (Zagoruyko & Komodakis): L2-normalised channel mean of ``f²``, flattened per sample."""
    a = upcast(feature).pow(2).mean(dim=1).flatten(1)
    return F.normalize(a, dim=1)


def attention_transfer_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """``L_AT = Σ_i mean over batch and positions of (AT(F_i) − AT(sg(T_i)))²`` with ``AT(f)`` the L2-normalised
    channel mean of ``f²`` (:func:`attention_map`); ``teacher`` holds ``ReLU(T_i)``. The mean of
    squares follows the official code (the paper's text writes a norm)."""
    return sum((attention_map(s) - attention_map(t.detach())).pow(2).mean() for s, t in zip(student, teacher))


def mixed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, perm: torch.Tensor,
                        lam: torch.Tensor) -> torch.Tensor:
    """Mixed-target CE of mixup/CutMix: ``λ·CE(z, y) + (1−λ)·CE(z, y_π)``."""
    return lam * cross_entropy(logits, targets) + (1 - lam) * cross_entropy(logits, targets[perm])


def non_target_log_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-softmax among the K−1 non-target logits of each row (target logit removed), as a (B, K) tensor
    whose target column is 0, so ``(q * out).sum(1)`` with ``q_y = 0`` sums over the non-target classes only."""
    is_target = F.one_hot(targets, logits.shape[1]).bool()
    masked = upcast(logits).masked_fill(is_target, float("-inf"))
    return F.log_softmax(masked, dim=1).masked_fill(is_target, 0.0)


def pixel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per-pixel CE of ``(B, K, H, W)`` logits against ``(B, H, W)`` targets, averaged over the labelled pixels
    (``targets != ignore_index``); 0 for a batch without any."""
    total = F.cross_entropy(upcast(logits), targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


def pixel_kd_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise ``KD_T``: ``T² · Σ_pixels KL(σ(sg(t)/T) ‖ σ(s/T)) / (B·H·W)`` over ``(B, K, H, W)`` logits; with a
    ``(B, H, W)`` boolean ``mask`` the sum runs over the masked pixels and is divided by their number."""
    q = F.softmax(upcast(teacher_logits.detach()) / temperature, dim=1)
    kl = kl_per_position(q, student_logits, temperature)
    if mask is None:
        return kl.mean() * temperature**2
    return (kl * mask).sum() / mask.sum().clamp(min=1) * temperature**2


def rampup_weight(epoch: int, rampup_epochs: int) -> float:
    """The official script's ramp ``w(t) = exp(−5·(1 − min(t, R)/R)²)``; ``R = 0`` gives w ≡ 1."""
    if rampup_epochs <= 0:
        return 1.0
    return math.exp(-5.0 * (1.0 - min(epoch, rampup_epochs) / rampup_epochs) ** 2)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype :func:`upcast` gives ``x``: float64 for float64, float32 for the rest (constants such as soft
    targets are made in it, so a float64 run keeps its precision)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
