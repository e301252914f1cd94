"""DDGSD: data-distortion guided self-distillation (:class:`DDGSD`)."""
from __future__ import annotations

from typing import Literal

from ..data.needs import DataNeeds
from ..losses import cross_entropy, kd_loss, upcast
from ..registry import NonNegative, Positive, Range
from .base import Method, MethodOutput
from .registry import register_method


@register_method("ddgsd")
class DDGSD(Method):
    """DDGSD: Xu, Liu, "Data-Distortion Guided Self-Distillation for Deep Neural Networks", AAAI 2019.

    Two distorted views ``[x¹; x²]`` of each image in one forward (BN over both views)::

        L = CE([z¹; z²], [y; y]) + λ·[KD_T(z², z¹) + KD_T(z¹, z²)] + μ·‖mean_b h¹ − mean_b h²‖²
        T = 4, λ = ``kd_weight`` = 1, μ = ``mmd_weight`` = 5e-4

    (``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))``; each view is the other's detached teacher.)
    The last term is a linear-kernel MMD between the batch means of the embeddings ``h``. Inference: one
    clean view.

    Reference code: none was released; Self-KD-Lib's is the only CIFAR-100 ResNet-18 source, and the
    default is its loss with two scaling slips fixed. ``compat="selfkdlib"`` reproduces them: the CE term
    halved once more, and the MMD taken between the scalar means of all entries of ``h¹`` and ``h²``.
    """

    data_needs = DataNeeds(views=2)

    search_space = {"temperature": Range(1.0, 8.0), "kd_weight": Range(0.1, 10.0, log=True),
                    "mmd_weight": Range(5e-5, 5e-3, log=True)}

    def __init__(self, model, num_classes, *, temperature: Positive = 4.0, kd_weight: NonNegative = 1.0,
                 mmd_weight: NonNegative = 5e-4, compat: Literal["official", "selfkdlib"] = "official"):
        super().__init__(model, num_classes)
        self.temperature, self.kd_weight, self.mmd_weight, self.compat = temperature, kd_weight, mmd_weight, compat

    def compute_loss(self, images, targets, index=None):
        h = self.backbone.embed(self.backbone.features(images)[-1])
        logits = self.backbone.fc(h)
        b = images.shape[0] // 2
        z1, z2, h1, h2 = logits[:b], logits[b:], upcast(h[:b]), upcast(h[b:])
        ce = cross_entropy(logits, targets)
        kd = kd_loss(z2, z1, self.temperature) + kd_loss(z1, z2, self.temperature)
        if self.compat == "selfkdlib":
            ce = ce / 2
            mmd = (h1.mean() - h2.mean()) ** 2
        else:
            mmd = (h1.mean(0) - h2.mean(0)).pow(2).sum()
        losses = {"ce": ce, "kd": self.kd_weight * kd, "mmd": self.mmd_weight * mmd}
        return MethodOutput(z1, sum(losses.values()), losses)
