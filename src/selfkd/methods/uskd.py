"""USKD: universal self-knowledge distillation (:class:`USKD`)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import compute_dtype, cross_entropy, non_target_log_softmax, smoothed_targets, soft_cross_entropy, upcast
from ..models.base import Backbone
from ..registry import NonNegative, Range
from .base import Method, MethodOutput
from .registry import register_method

WEAK_SMOOTHING = 0.1  # the weak head's target is 0.9·1_y + 0.1/K


@register_method("uskd")
class USKD(Method):
    """USKD: Yang, Zeng, Li, Zhang, Yuan, Li, "From Knowledge Distillation to Self-Knowledge Distillation: A
    Unified Approach with Normalized Loss and Customized Soft Labels", ICCV 2023 (official code: yzd-v/cls_KD).

    ``L = CE(z, y) + α·L_t + β·L_n + μ·L_w``, α = β = μ = 0.1 (the official CIFAR-100 config; its ImageNet
    configs use α = 1, β = 0.1, μ = 0.005), with ``p = σ(z)``:

    - ``L_t = −(1/B) Σ_b p̃_b log p_{b,y}`` with ``p̃ = sg(p_y² + 1 − mean_batch(p_y²))``;
    - ``L_w = SCE(weak, 0.9·1_y + 0.1/K)`` for a weak ``Linear`` head on ``GAP(F_{n−1})`` (undetached);
    - ``L_n = SCE(z_{≠y}, ζ)``: softmax among the non-target logits against the customised soft label ζ
      (sg): classes sorted by ``r = w/(1 − w_y + 1e-6) + s/(1 − s_y + 1e-6)`` (w = softmax of the weak
      logits, s = log p by default) get ``1/position``; the target is dropped and the rest renormalised.

    Inference uses the backbone; the weak head is dropped.

    Reference code: it computes the ranking score from the log-probabilities (it reuses the name of the
    probabilities for them); ``rank_on="log_prob"`` (default) reproduces that, ``rank_on="prob"`` uses
    ``s = p``, the evident intent. It hard-codes ``.cuda()`` for the Zipf vector (a buffer here). Its top-2
    soft labels for mixup/CutMix batches are not implemented (no selfkd recipe mixes USKD's batches).
    """

    search_space = {"alpha": Range(0.01, 1.0, log=True), "beta": Range(0.01, 1.0, log=True),
                    "mu": Range(0.01, 1.0, log=True)}

    def __init__(self, model: Backbone, num_classes: int, alpha: NonNegative = 0.1, beta: NonNegative = 0.1,
                 mu: NonNegative = 0.1, rank_on: Literal["log_prob", "prob"] = "log_prob"):
        super().__init__(model, num_classes)
        if len(model.stages) < 2:
            raise ConfigError("USKD's weak head reads the second-to-last stage, so it needs a backbone with at "
                              f"least two stages; '{getattr(model, 'name', 'this model')}' has {len(model.stages)}.")
        self.alpha, self.beta, self.mu, self.rank_on = alpha, beta, mu, rank_on
        self.weak_head = nn.Linear(model.stage_channels[-2], num_classes)
        self.register_buffer("zipf", 1.0 / torch.arange(1, num_classes + 1, dtype=torch.float64), persistent=False)

    def soft_labels(self, logits: torch.Tensor, weak_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The customised non-target label ζ (rows sum to 1, ζ_y = 0), without gradient."""
        with torch.no_grad():
            w = F.softmax(upcast(weak_logits.detach()), dim=1)
            s = F.log_softmax(upcast(logits.detach()), dim=1)
            if self.rank_on == "prob":
                s = s.exp()
            y = targets[:, None]
            score = w / (1 - w.gather(1, y) + 1e-6) + s / (1 - s.gather(1, y) + 1e-6)
            order = score.argsort(dim=1, descending=True, stable=True)
            zeta = torch.zeros_like(score).scatter_(1, order, self.zipf.to(score.dtype).expand_as(score))
            zeta = zeta.masked_fill(F.one_hot(targets, score.shape[1]).bool(), 0.0)
            return zeta / zeta.sum(dim=1, keepdim=True)

    def compute_loss(self, images, targets, index=None):
        logits, feats = self.backbone(images)
        weak = self.weak_head(feats[-2].mean(dim=(2, 3)))
        log_p_y = F.log_softmax(upcast(logits), dim=1).gather(1, targets[:, None]).squeeze(1)
        p_y2 = log_p_y.detach().exp().pow(2)
        target_term = -((p_y2 + 1 - p_y2.mean()) * log_p_y).mean()
        zeta = self.soft_labels(logits, weak, targets)
        non_target = -(zeta * non_target_log_softmax(logits, targets)).sum(dim=1).mean()
        weak_target = smoothed_targets(targets, self.num_classes, WEAK_SMOOTHING, "uniform", compute_dtype(weak))
        weak_term = soft_cross_entropy(weak, weak_target)
        losses = {"ce": cross_entropy(logits, targets), "target": self.alpha * target_term,
                  "non_target": self.beta * non_target, "weak": self.mu * weak_term}
        return MethodOutput(logits, sum(losses.values()), losses)
