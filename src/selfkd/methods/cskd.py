"""CS-KD: class-wise self-knowledge distillation (:class:`CSKD`)."""
from __future__ import annotations

import torch

from ..data.needs import DataNeeds
from ..losses import cross_entropy, kd_loss
from ..registry import NonNegative, Positive, Range
from .base import Method, MethodOutput
from .registry import register_method


@register_method("cskd")
class CSKD(Method):
    """CS-KD: Yun, Park, Lee, Shin, "Regularizing Class-wise Predictions via Self-knowledge Distillation",
    CVPR 2020.

    Each anchor is distilled from another image of its class::

        L = CE(z_a, y) + λ·KD_T(z_p, z_a)        T = 4, λ = ``kd_weight`` = 1

    with ``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))``, ``z_a`` the anchors' logits and ``z_p``
    the partners'. The batch is ``[anchors; partners]`` (one partner per anchor, drawn uniformly from the
    anchor's class by the data pipeline). Two forwards, as the official code: the anchors with gradient,
    the partners under ``no_grad`` in train mode (so BN running statistics are updated by both halves).
    No CE on partners. T and λ are the official CIFAR values (also Self-KD-Lib's).

    Reference code: its sampler may pair an anchor with itself (probability 1/500 on CIFAR-100); the
    default keeps that, ``exclude_self=True`` never does. Its sampler is not DDP-aware; selfkd's shards
    the anchors and keeps each pair on one rank (one process gives the official batches).
    """

    search_space = {"temperature": Range(1.0, 8.0), "kd_weight": Range(0.1, 10.0, log=True)}

    def __init__(self, model, num_classes, *, temperature: Positive = 4.0, kd_weight: NonNegative = 1.0,
                 exclude_self: bool = False):
        super().__init__(model, num_classes)
        self.temperature, self.kd_weight = temperature, kd_weight
        self.data_needs = DataNeeds(class_partners=1, exclude_self=exclude_self)

    def compute_loss(self, images, targets, index=None):
        b = images.shape[0] // 2
        logits, _ = self.backbone(images[:b])
        with torch.no_grad():
            partner_logits, _ = self.backbone(images[b:])
        losses = {
            "ce": cross_entropy(logits, targets[:b]),
            "kd": self.kd_weight * kd_loss(partner_logits, logits, self.temperature),
        }
        return MethodOutput(logits, losses["ce"] + losses["kd"], losses)
