"""DDGSD: data-distortion guided self-distillation (baselines.md §8).

Xu, Liu, "Data-Distortion Guided Self-Distillation for Deep Neural Networks", AAAI 2019. No official code;
this follows Self-KD-Lib (the only CIFAR-100 ResNet-18 source) with its two scaling slips fixed by default.
"""
from __future__ import annotations

from typing import Literal

from ..errors import ConfigError
from ..losses import cross_entropy, kd_loss
from .base import DataNeeds, Method, MethodOutput
from .registry import register_method


@register_method("ddgsd")
class DDGSD(Method):
    """Two distorted views ``[x¹; x²]`` of each image in one forward (BN over both views)::

        L = CE([z¹; z²], [y; y]) + KD_T(z², z¹) + KD_T(z¹, z²) + μ·‖mean_b h¹ − mean_b h²‖²      T = 4, μ = 5e-4

    The last term is a linear-kernel MMD between the batch means of the embeddings.
    ``compat="selfkdlib"`` reproduces Self-KD-Lib's slips: the CE term halved once more, and the MMD
    taken between the scalar means of all entries of ``h¹`` and ``h²``; the default ``"official"`` is the
    fixed form above (there is no official code). Inference: one clean view.
    """

    data_needs = DataNeeds(views=2)

    def __init__(self, model, num_classes, *, temperature: float = 4.0, kd_weight: float = 1.0,
                 mmd_weight: float = 5e-4, compat: Literal["official", "selfkdlib"] = "official"):
        super().__init__(model, num_classes)
        if temperature <= 0 or kd_weight < 0 or mmd_weight < 0:
            raise ConfigError(f"ddgsd needs temperature > 0 and non-negative weights, got temperature={temperature}, "
                              f"kd_weight={kd_weight}, mmd_weight={mmd_weight}.")
        self.temperature, self.kd_weight, self.mmd_weight, self.compat = temperature, kd_weight, mmd_weight, compat

    def compute_loss(self, images, targets, index=None):
        h = self.backbone.embed(self.backbone.features(images)[-1])
        logits = self.backbone.fc(h)
        b = images.shape[0] // 2
        z1, z2, h1, h2 = logits[:b], logits[b:], h[:b].float(), h[b:].float()
        ce = cross_entropy(logits, targets)
        kd = kd_loss(z2, z1, self.temperature) + kd_loss(z1, z2, self.temperature)
        if self.compat == "selfkdlib":
            ce = ce / 2
            mmd = (h1.mean() - h2.mean()) ** 2
        else:
            mmd = (h1.mean(0) - h2.mean(0)).pow(2).sum()
        losses = {"ce": ce, "kd": self.kd_weight * kd, "mmd": self.mmd_weight * mmd}
        return MethodOutput(z1, sum(losses.values()), losses)
