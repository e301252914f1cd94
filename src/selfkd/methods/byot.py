"""BYOT: shallow exits taught by the deepest classifier (:class:`BYOT`)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import cross_entropy, kd_loss, upcast
from ..models.base import init_weights
from ..registry import NonNegative, Positive, PositiveInt, Range
from .base import Method, MethodOutput
from .parts.branches import StageCopyBranch
from .registry import register_method


class ShallowClassifier(nn.Module):
    """Bottleneck exit on a stage output: conv1×1 C→w → BN → ReLU → conv k×k stride k w→w → BN → ReLU →
    conv1×1 w→d → BN → ReLU → GAP → FC(d→K); all convs with bias. ``k`` brings the feature to the
    resolution of the last stage (k = 8, 4, 2 for stages 1–3 of a CIFAR ResNet-18); ``d`` is the backbone's
    embedding size, so ``h_i`` and ``h`` can be compared."""

    def __init__(self, channels: int, kernel: int, width: int, embed_dim: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, kernel, kernel), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, embed_dim, 1), nn.BatchNorm2d(embed_dim), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(embed_dim, num_classes)
        init_weights(self)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding h_i)."""
        h = self.features(feature).mean(dim=(2, 3))
        return self.fc(h), h


@register_method("byot")
class BYOT(Method):
    """BYOT: Zhang, Song, Gao, Chen, Bao, Ma, "Be Your Own Teacher: Improve the Performance of Convolutional
    Neural Networks via Self Distillation", ICCV 2019.

    Shallow classifiers after every stage but the last are taught by the deepest classifier (the backbone).
    Default (``branch="bottleneck"``, :class:`ShallowClassifier` exits), with ``z_4 = z`` and ``h_4 = h``::

        L = (1−α)·Σ_{i≤4} CE(z_i, y) + α·Σ_{i≤3} KD_T(z_4, z_i) + λ·Σ_{i≤3} Σ_{b,c} 1[h_i>0 ∨ h_4>0]·(h_i − sg h_4)²
        α = 0.1, T = 3, λ = 1e-6

    (``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))``; the feature term is a sum over batch and
    channels.) The paper gives no α or λ and no official code was released: the default is the design of
    luanyunteng/pytorch-be-your-own-teacher, whose CIFAR-100 ResNet-18 results match the paper's.
    ``branch="stage_copy"`` is Self-KD-Lib's variant: exits from ``F_2`` and ``F_3`` made of one-block stage
    copies, ``L = Σ_3 CE + Σ_aux KD_4(z, z_aux) + 0.05·Σ_aux MSE(G_aux, sg F_4)`` on the final feature maps.
    ``ce_weight``, ``kd_weight``, ``temperature``, ``feature_weight`` left out take the chosen branch's
    values (bottleneck: 1−α = 0.9, α = 0.1, 3, 1e-6; stage_copy: 1, 1, 4, 0.05).

    Inference uses the backbone; ``eval="exitN"`` uses auxiliary exit N (numbered from the shallowest)
    and ``eval="ensemble"`` the mean of the logits of all exits, backbone included (the paper's extras).
    """

    search_space = {"kd_weight": Range(0.01, 1.0, log=True), "temperature": Range(1.0, 8.0),
                    "feature_weight": Range(1e-7, 1e-5, log=True)}

    def __init__(self, model, num_classes, *, branch: Literal["bottleneck", "stage_copy"] = "bottleneck",
                 ce_weight: NonNegative | None = None, kd_weight: NonNegative | None = None,
                 temperature: Positive | None = None, feature_weight: NonNegative | None = None,
                 bottleneck_width: PositiveInt = 128,
                 eval: Literal["backbone", "ensemble", "exit1", "exit2", "exit3"] = "backbone"):
        super().__init__(model, num_classes)
        defaults = {"bottleneck": (0.9, 0.1, 3.0, 1e-6), "stage_copy": (1.0, 1.0, 4.0, 0.05)}[branch]
        given = (ce_weight, kd_weight, temperature, feature_weight)
        self.ce_weight, self.kd_weight, self.temperature, self.feature_weight = (
            d if v is None else v for v, d in zip(given, defaults))
        n = len(model.stage_channels)
        if branch == "bottleneck":
            self.sources = list(range(n - 1))
            self.exits = nn.ModuleList(
                ShallowClassifier(model.stage_channels[i], model.stage_reductions[-1] // model.stage_reductions[i],
                                  bottleneck_width, model.embed_dim, num_classes)
                for i in self.sources)
        else:
            self.sources = list(range(max(n - 3, 0), n - 1))
            self.exits = nn.ModuleList(StageCopyBranch(model, i + 1, num_classes, blocks=[1] * (n - 1 - i))
                                       for i in self.sources)
        if eval.startswith("exit") and int(eval[4:]) > len(self.exits):
            raise ConfigError(f"byot eval='{eval}': this model has {len(self.exits)} auxiliary exits "
                              f"(exit1..exit{len(self.exits)}) with branch='{branch}'.")
        self.branch, self.eval_mode = branch, eval

    def _forward(self, images):
        feats = self.backbone.features(images)
        h = self.backbone.embed(feats[-1])
        aux = [head(feats[i]) for head, i in zip(self.exits, self.sources)]
        return self.backbone.fc(h), h, feats[-1], aux

    def compute_loss(self, images, targets, index=None):
        logits, h, last, aux = self._forward(images)
        ce = cross_entropy(logits, targets) + sum(cross_entropy(z, targets) for z, _ in aux)
        kd = sum(kd_loss(logits, z, self.temperature) for z, _ in aux)
        if self.branch == "bottleneck":
            target = upcast(h.detach())
            feature = sum((((upcast(g) - target) ** 2) * ((g > 0) | (h > 0))).sum() for _, g in aux)
        else:
            feature = sum(F.mse_loss(upcast(g), upcast(last.detach())) for _, g in aux)
        losses = {"ce": self.ce_weight * ce, "kd": self.kd_weight * kd, "feature": self.feature_weight * feature}
        return MethodOutput(logits, sum(losses.values()), losses)

    def eval_model(self) -> nn.Module:
        return self.backbone if self.eval_mode == "backbone" else self

    def predict(self, images):
        if self.eval_mode == "backbone":
            return super().predict(images)
        logits, _, _, aux = self._forward(images)
        if self.eval_mode == "ensemble":
            return torch.stack([upcast(logits)] + [upcast(z) for z, _ in aux]).mean(0)
        return aux[int(self.eval_mode[4:]) - 1][0]
