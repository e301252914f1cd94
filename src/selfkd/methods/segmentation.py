"""Segmentation methods: plain pixel CE and FRSKD's self-teacher for segmentation.

Targets are ``(B, H, W)`` int64 class indices with :data:`~selfkd.tasks.IGNORE_LABEL` for unlabelled pixels; the model
is a
:class:`~selfkd.models.segmentation.Segmenter` (``forward(x) -> (logits, pyramid)``). Inference uses the
segmenter's logits alone. A pixel-wise version of another method is one more class here: the pixel losses
are in :mod:`selfkd.losses` (``pixel_cross_entropy``, ``pixel_kd_loss``).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import ConfigError, SelfKDWarning
from ..losses import attention_transfer_loss, pixel_cross_entropy, pixel_kd_loss, rampup_weight
from ..models.segmentation import BiFPNSeg, SegmentationHead
from ..registry import NonNegative, NonNegativeInt, Positive, Range
from ..tasks import IGNORE_LABEL
from .base import Method, MethodOutput
from .registry import register_method


@register_method("ce", task="segmentation")
class SegmentationCE(Method):
    """``CE(out, y)`` averaged over labelled pixels: the baseline of every segmentation method."""

    def compute_loss(self, images, targets, index=None):
        logits, _ = self.backbone(images)
        ce = pixel_cross_entropy(logits, targets, IGNORE_LABEL)
        return MethodOutput(logits, ce, {"ce": ce})


def distillation_ramp(epoch: int, num_epochs: int, warmup_epochs: int, ramp_epochs: int | None) -> float:
    """FRSKD segmentation's weight of KD and AT in ``epoch`` (0-based): 0 during the first ``warmup_epochs``, then
    ``exp(−5(1 − t)²)`` with ``t = min((epoch + 1 − warmup) / R, 1)``; ``R = ramp_epochs``, by default the rest of
    the run (``num_epochs − warmup``, as in the official script); ``R = 0`` switches to full strength at once."""
    if epoch < warmup_epochs:
        return 0.0
    ramp = num_epochs - warmup_epochs if ramp_epochs is None else ramp_epochs
    return rampup_weight(epoch + 1 - warmup_epochs, ramp)


@register_method("frskd", task="segmentation")
class SegmentationFRSKD(Method):
    """FRSKD for semantic segmentation (Ji, Shin, Hwang, Park, Moon, "Refine Myself by Teaching Myself: Feature
    Refinement via Self-Knowledge Distillation", CVPR 2021; the behaviour of its official segmentation code).

    The self-teacher is two more :class:`BiFPNSeg` layers (the last top-down only) on the segmenter's pyramid
    ``S1`` → ``S2``, and a second head of the segmenter head's shape on ``S2``'s finest level → ``out2``. ``S1``
    is not detached, so the teacher's CE also trains the segmenter's BiFPN and encoder::

        L = CE(out1, y) + CE(out2, y) + α_e·KD + β_e·AT
        KD = T²·Σ_pixels KL(σ(sg(out2)/T) ‖ σ(out1/T)) / (B·H·W)
        AT = Σ_levels mean((at(S1_l) − at(sg(S2_l)))²),   at(f) = L2-normalised channel mean of f²

    CE is averaged over labelled pixels. Defaults are the official ones: α = 1, β = 50, T = 1;
    ``α_e = α·r_e``, ``β_e = β·r_e`` with :func:`distillation_ramp` ``r_e`` (0 for ``warmup_epochs`` = 40
    epochs, then ``exp(−5(1 − t)²)`` up to full strength at the last epoch). The official KD also averages over
    ignored and padded pixels; ``kd_mask=True`` restricts it to labelled pixels instead.
    ``tests/test_fidelity_frskd.py`` compares it on ``frskd_seg_effb0`` (``stem_activation=False``) with the official
    code over the warm-up and the ramp (README "Fidelity").
    """

    search_space = {"alpha": Range(0.1, 10.0, log=True), "beta": Range(5.0, 500.0, log=True),
                    "temperature": Range(1.0, 8.0)}

    def __init__(self, model: nn.Module, num_classes: int, alpha: NonNegative = 1.0, beta: NonNegative = 50.0,
                 temperature: Positive = 1.0, warmup_epochs: NonNegativeInt = 40,
                 ramp_epochs: NonNegativeInt | None = None, kd_mask: bool = False):
        super().__init__(model, num_classes)
        channels = getattr(model, "pyramid_channels", 0)
        if not channels:
            raise ConfigError(
                f"Segmentation method frskd needs a segmenter with a feature pyramid, but model "
                f"'{getattr(model, 'name', type(model).__name__)}' has none. Use frskd_seg_effb0 (or another "
                "frskd_seg_* model); the torchvision reference segmenters train with method ce."
            )
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.warmup_epochs, self.ramp_epochs = warmup_epochs, ramp_epochs
        self.kd_mask = kd_mask
        self.teacher = nn.Sequential(BiFPNSeg(channels), BiFPNSeg(channels, top_down_only=True))
        self.teacher_head = SegmentationHead(channels, model.head_channels, num_classes)
        self.register_buffer("ramp", torch.zeros(()))  # r_e, set by on_epoch_start

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if epoch == 0 and self.warmup_epochs >= num_epochs and (self.alpha or self.beta):
            warnings.warn(f"frskd: warmup_epochs={self.warmup_epochs} but the run has {num_epochs} epochs, so KD and "
                          "AT never start (the official 40 fit its 60-epoch recipe); lower warmup_epochs.",
                          SelfKDWarning, stacklevel=2)
        self.ramp.fill_(distillation_ramp(epoch, num_epochs, self.warmup_epochs, self.ramp_epochs))

    def compute_loss(self, images, targets, index=None):
        out1, s1 = self.backbone(images)
        s2 = self.teacher(s1)
        out2 = self.teacher_head(s2[0], images.shape[-2:])
        mask = targets != IGNORE_LABEL if self.kd_mask else None
        losses = {
            "ce": pixel_cross_entropy(out1, targets, IGNORE_LABEL),
            "ce_teacher": pixel_cross_entropy(out2, targets, IGNORE_LABEL),
            "kd": self.alpha * self.ramp * pixel_kd_loss(out2, out1, self.temperature, mask),
            "at": self.beta * self.ramp * attention_transfer_loss(s1, s2),
        }
        return MethodOutput(out1, sum(losses.values()), losses)
