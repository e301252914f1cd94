"""SAD: self attention distillation (:class:`SAD`), in Self-KD-Lib's classification form."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import cross_entropy, upcast
from ..models.base import Backbone
from ..registry import NonNegative, NonNegativeInt, Range
from .base import Method, MethodOutput
from .registry import register_method


def spatial_attention(feature: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """``A(F) = softmax over the H·W positions of mean_c F²`` (``reduce="sum"``: Σ_c F², the paper's form)."""
    energy = upcast(feature).pow(2)
    energy = energy.sum(dim=1) if reduce == "sum" else energy.mean(dim=1)
    return F.softmax(energy.flatten(1), dim=1)


@register_method("sad")
class SAD(Method):
    """SAD: Hou, Ma, Liu, Loy, "Learning Lightweight Lane Detection CNNs by Self Attention Distillation",
    ICCV 2019 (lane detection; this is Self-KD-Lib's classification form).

    Each stage's attention map is taught by the next deeper stage's::

        A(F) = softmax over the H·W positions of mean_c F²
        L = CE(z, y) + weight·Σ_i MSE(A(F_i), A(up(sg F_{i+1})))          weight = 1000

    The deeper stage's feature map is detached, bilinearly up-sampled (align_corners=False) to the
    shallower stage's size (×2 for ResNets), then turned into an attention map. No parameters.
    ``reduce="sum"`` is the paper's ``Σ_c F²`` (a softmax sharper by the channel count);
    ``start_epoch`` switches the term on only from that (0-based) epoch, as the paper does after partial
    training; the default 0 follows Self-KD-Lib.
    """

    search_space = {"weight": Range(100.0, 10000.0, log=True)}

    def __init__(self, model: Backbone, num_classes: int, weight: NonNegative = 1000.0,
                 reduce: Literal["mean", "sum"] = "mean", start_epoch: NonNegativeInt = 0):
        super().__init__(model, num_classes)
        if len(model.stages) < 2:
            raise ConfigError("SAD distils attention between consecutive stages, so it needs a backbone with at "
                              f"least two stages; '{getattr(model, 'name', 'this model')}' has {len(model.stages)}.")
        self.weight, self.reduce, self.start_epoch = weight, reduce, start_epoch
        self.register_buffer("active", torch.tensor(float(start_epoch <= 0)))

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.active.fill_(float(epoch >= self.start_epoch))

    def attention_loss(self, feats: list[torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for student, deeper in zip(feats[:-1], feats[1:]):
            teacher = F.interpolate(upcast(deeper.detach()), size=student.shape[-2:], mode="bilinear",
                                    align_corners=False)
            total = total + F.mse_loss(spatial_attention(student, self.reduce), spatial_attention(teacher, self.reduce))
        return total

    def compute_loss(self, images, targets, index=None):
        logits, feats = self.backbone(images)
        losses = {"ce": cross_entropy(logits, targets),
                  "sad": self.weight * self.active * self.attention_loss(feats)}
        return MethodOutput(logits, sum(losses.values()), losses)
