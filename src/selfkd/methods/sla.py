"""SLA-SD: self-supervised label augmentation with self-distillation (:class:`SLASD`)."""
from __future__ import annotations

from typing import Literal

from torch import nn

from ..losses import cross_entropy, kd_loss
from ..registry import Positive, Range
from .base import Method, MethodOutput
from .parts.batch_transforms import aggregate_rotations, rotate_batch, rotation_targets
from .registry import register_method

ROTATIONS = 4


@register_method("sla_sd")
class SLASD(Method):
    """SLA-SD: Lee, Hwang, Shin, "Self-supervised Label Augmentation via Input Transformations", ICML 2020
    (its mode ``sla+sd``).

    A joint head classifies (class, rotation) pairs; the backbone's own fc (the single head) learns
    the class from the unrotated image and is distilled from the joint head's aggregated prediction::

        g = joint(h) on all 4B rotated images,  s = fc(h) on the rotation-0 rows,
        a_{b,k} = (1/M) Σ_j g_{(b,j), k·M+j}
        L = CE(g, y·M + j) + CE(s, y) + KD_T(a, s)            T = 1 (the official default), M = 4

    with ``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))`` (the aggregate is the detached teacher).
    One forward on the 4B batch (BN over mixed rotations); the single head reads only the rotation-0 rows
    (computing it on all 4B rows would be wasted work). ``large_loss=True`` multiplies the joint CE
    by M (the authors' advice for ImageNet-scale data). Inference: the single head on the unrotated
    image ("SLA+SD single"); ``eval="aggregate"`` returns ``a`` (4 rotations per test image).
    """

    search_space = {"temperature": Range(1.0, 8.0)}

    def __init__(self, model, num_classes, *, temperature: Positive = 1.0, large_loss: bool = False,
                 eval: Literal["single", "aggregate"] = "single"):
        super().__init__(model, num_classes)
        self.temperature, self.large_loss, self.eval_mode = temperature, large_loss, eval
        self.joint = nn.Linear(model.embed_dim, num_classes * ROTATIONS)

    def _joint_forward(self, images):
        """(single-head logits of the unrotated images, joint logits g, aggregated logits a)."""
        h = self.backbone.embed(self.backbone.features(rotate_batch(images, ROTATIONS))[-1])
        g = self.joint(h)
        return self.backbone.fc(h[::ROTATIONS]), g, aggregate_rotations(g, ROTATIONS)

    def compute_loss(self, images, targets, index=None):
        logits, g, a = self._joint_forward(images)
        joint_ce = cross_entropy(g, rotation_targets(targets, ROTATIONS))
        losses = {
            "joint_ce": joint_ce * ROTATIONS if self.large_loss else joint_ce,
            "ce": cross_entropy(logits, targets),
            "kd": kd_loss(a, logits, self.temperature),
        }
        return MethodOutput(logits, sum(losses.values()), losses)

    def eval_model(self) -> nn.Module:
        return self.backbone if self.eval_mode == "single" else self

    def predict(self, images):
        return super().predict(images) if self.eval_mode == "single" else self._joint_forward(images)[2]
