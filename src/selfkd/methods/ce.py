"""Plain cross-entropy and label smoothing."""
from __future__ import annotations

from typing import Literal

from ..losses import compute_dtype, cross_entropy, smoothed_targets, soft_cross_entropy
from ..registry import Fraction, Range
from .base import Method, MethodOutput
from .registry import register_method


@register_method("ce")
class CrossEntropy(Method):
    """CE(z, y): the baseline every method is compared with."""

    def compute_loss(self, images, targets, index=None):
        logits, _ = self.backbone(images)
        ce = cross_entropy(logits, targets)
        return MethodOutput(logits, ce, {"ce": ce})


@register_method("ls")
class LabelSmoothing(Method):
    """Label smoothing: Szegedy, Vanhoucke, Ioffe, Shlens, Wojna, "Rethinking the Inception Architecture for
    Computer Vision", CVPR 2016.

    ``L = SCE(z, q) = −(1/B) Σ_b Σ_k q_bk log σ(z_b)_k`` with ``q = (1−ε)·1_y + ε/(K−1)·(1−1_y)``, ε = 0.1: the
    form of the Self-KD-Lib, TF-KD and Zipf's LS code (the true class gets exactly 1−ε).
    ``ls_style="uniform"`` gives the paper's and PyTorch's ``(1−ε)·1_y + ε/K`` instead.
    """

    search_space = {"epsilon": Range(0.01, 0.3, log=True)}

    def __init__(self, model, num_classes, epsilon: Fraction = 0.1, ls_style: Literal["others", "uniform"] = "others"):
        super().__init__(model, num_classes)
        self.epsilon, self.ls_style = epsilon, ls_style

    def compute_loss(self, images, targets, index=None):
        logits, _ = self.backbone(images)
        target = smoothed_targets(targets, self.num_classes, self.epsilon, self.ls_style, compute_dtype(logits))
        loss = soft_cross_entropy(logits, target)
        return MethodOutput(logits, loss, {"ls": loss})
