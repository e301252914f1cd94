"""Zipf's label smoothing (:class:`ZipfLS`)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..losses import compute_dtype, cross_entropy, non_target_log_softmax, upcast
from ..models.base import Backbone
from ..registry import NonNegative, Positive, Range
from .base import Method, MethodOutput
from .registry import register_method


def competition_ranks(scores: torch.Tensor) -> torch.Tensor:
    """``r_{b,k} = 1 + #{j : s_{b,j} > s_{b,k}}`` per row: rank 1 is the largest, ties share the smallest rank."""
    ascending = scores.sort(dim=1).values.contiguous()
    not_greater = torch.searchsorted(ascending, scores.contiguous(), right=True)
    return (1 + scores.shape[1] - not_greater).to(scores.dtype)


def dense_votes(feature: torch.Tensor, classifier: torch.nn.Module, num_classes: int,
                upsample: str | None) -> torch.Tensor:
    """``v_{b,k}``: positions of the (up-sampled) final map whose per-position classifier argmax is ``k``."""
    if upsample is not None:
        feature = F.interpolate(feature, scale_factor=2, mode=upsample, align_corners=False)
    winners = classifier(feature.flatten(2).transpose(1, 2)).argmax(dim=2)  # (B, positions)
    votes = torch.zeros(feature.shape[0], num_classes, device=feature.device, dtype=compute_dtype(feature))
    return votes.scatter_add_(1, winners, torch.ones_like(winners, dtype=votes.dtype))


def zipf_targets(scores: torch.Tensor, targets: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """``π_k ∝ r_k^{−p}`` over the non-target classes (``π_y = 0``, rows sum to 1)."""
    weights = competition_ranks(scores).pow(-power)
    weights = weights.masked_fill(F.one_hot(targets, scores.shape[1]).bool(), 0.0)
    return weights / weights.sum(dim=1, keepdim=True)


@register_method("zipf_ls")
class ZipfLS(Method):
    """Zipf's LS: Liang, Li, Bing, Zhao, Tang, Lin, Fan, "Efficient One Pass Self-distillation with Zipf's
    Label Smoothing", ECCV 2022 (official code: megvii-research/zipfls).

    The non-target classes are ranked by the network's own votes and the target follows Zipf's law::

        r_{b,k} = 1 + #{j : v_{b,j} > v_{b,k}}          (ties share the smallest rank)
        π_k ∝ r_k^{−p} over k ≠ y,   ρ = softmax of the K−1 non-target logits
        L = CE(z, y) + λ·(1/B) Σ_b KL(π_b ‖ ρ_b)        λ = ``weight`` = 0.1, p = ``power`` = 1

    The votes ``v`` (no gradient) are dense (``dense=True``): the backbone FC is applied at every position
    of the bilinearly ×2 up-sampled final map (``upsample=None``: as is) and each class counts the
    positions it wins; ``dense=False`` ranks by the logits themselves. ``loss_mask=True`` (an official
    flag, off in its CIFAR-100 command) averages the Zipf term over the correctly classified samples only.
    No parameters.

    Reference code: it ranks on the CPU with SciPy; the same ranks are computed on the device here. Its
    CIFAR model holds two extra heads that no loss uses; they are not created.
    """

    search_space = {"weight": Range(0.01, 1.0, log=True), "power": Range(0.5, 2.0)}

    def __init__(self, model: Backbone, num_classes: int, weight: NonNegative = 0.1, power: Positive = 1.0,
                 dense: bool = True, upsample: Literal["bilinear"] | None = "bilinear", loss_mask: bool = False):
        super().__init__(model, num_classes)
        self.weight, self.power, self.dense, self.upsample, self.loss_mask = weight, power, dense, upsample, loss_mask

    def compute_loss(self, images, targets, index=None):
        logits, feats = self.backbone(images)
        with torch.no_grad():
            if self.dense:
                scores = dense_votes(feats[-1].detach(), self.backbone.fc, self.num_classes, self.upsample)
            else:
                scores = upcast(logits.detach())
            pi = zipf_targets(scores, targets, self.power)
        per_sample = (torch.special.xlogy(pi, pi) - pi * non_target_log_softmax(logits, targets)).sum(dim=1)
        if self.loss_mask:
            correct = (logits.detach().argmax(dim=1) == targets).float()
            zipf = (per_sample * correct).sum() / correct.sum().clamp(min=1.0)
        else:
            zipf = per_sample.mean()
        losses = {"ce": cross_entropy(logits, targets), "zipf": self.weight * zipf}
        return MethodOutput(logits, sum(losses.values()), losses)
