"""CS-KD: class-wise self-knowledge distillation (baselines.md §3).

Yun, Park, Lee, Shin, "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from ..losses import cross_entropy, kd_loss
from .base import DataNeeds, Method, MethodOutput
from .registry import register_method


@register_method("cskd")
class CSKD(Method):
    """``CE(z_a, y) + λ·KD_T(z_p, z_a)``: each anchor is distilled from another image of its class.

    The batch is ``[anchors; partners]`` (one partner per anchor, drawn uniformly from the anchor's
    class by the data pipeline). Two forwards, as the official code: the anchors with gradient, the
    partners under ``no_grad`` in train mode (so BN running statistics are updated by both halves).
    No CE on partners. ``exclude_self=True`` never pairs an anchor with itself (the official sampler
    may, with probability 1/500 on CIFAR-100). Defaults T = 4, λ = 1 (official CIFAR and Self-KD-Lib).
    The official sampler is not DDP-aware; selfkd's shards the anchors and keeps each pair on one rank.
    """

    def __init__(self, model, num_classes, *, temperature: float = 4.0, kd_weight: float = 1.0,
                 exclude_self: bool = False):
        super().__init__(model, num_classes)
        if temperature <= 0 or kd_weight < 0:
            raise ConfigError(f"cskd needs temperature > 0 and kd_weight >= 0, got temperature={temperature}, "
                              f"kd_weight={kd_weight}. The paper uses temperature=4, kd_weight=1.")
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
