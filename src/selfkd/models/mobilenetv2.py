"""MobileNetV2 (Sandler et al. 2018) built from torchvision's blocks: inverted residuals (expansion 6,
the first block 1), ReLU6, a final conv1x1 to 1280 + BN + ReLU6, GAP, dropout, FC.

Stages group the blocks by output resolution. The stem is the first conv plus the expansion-1 block
(a plain separable conv, at the stem's resolution); every later block joins the stage of its output
resolution, and the final conv1x1 ends the last stage, so ``fc`` reads ``GAP(F_n)`` (after dropout).

- ``mobilenetv2`` (CIFAR): stem stride 1 and the 24-channel group stride 1, so 32x32 inputs end at
  4x4. Stages: [24, 24] @32, [32 x3] @16, [64 x4, 96 x3] @8, [160 x3, 320, conv 1280] @4;
  channels 24/32/96/1280, reductions 1/2/4/8. 2,351,972 parameters with K=100.
- ``mobilenetv2_imagenet`` (torchvision's network, registered in ``torchvision_models``): the same grouping
  gives stages @4/8/16/32 with channels 24/32/96/1280. 3,504,872 parameters with K=1000.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.ops.misc import Conv2dNormActivation

from ..registry import Fraction, Positive, PositiveInt
from .base import Backbone, init_weights
from .registry import register_model

# (expansion t, channels c, blocks n, stride of the first block s), Table 2 of the paper
IMAGENET_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                    [6, 320, 1, 1]]
CIFAR_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                 [6, 320, 1, 1]]


def stage_layers(setting: list[list[int]], stem_stride: int) -> dict[int, list[int]]:
    """Total reduction -> the indices in torchvision's ``features`` of the layers of that stage (every layer after the
    stem's two, the final conv1x1 included)."""
    strides = [s if i == 0 else 1 for _, _, n, s in setting[1:] for i in range(n)] + [1]
    stages, reduction = {}, stem_stride
    for index, stride in enumerate(strides, start=2):
        reduction *= stride
        stages.setdefault(reduction, []).append(index)
    return stages


class MobileNetV2Backbone(Backbone):
    def __init__(self, num_classes: int, in_channels: int, stem_stride: int, setting: list[list[int]],
                 width_mult: float = 1.0, dropout: float = 0.0, name: str = "mobilenetv2"):
        super().__init__()
        self.name = name
        net = MobileNetV2(num_classes, width_mult, setting, dropout=dropout)
        layers = list(net.features)  # stem conv, the blocks of every setting row, final conv1x1
        layers[0] = Conv2dNormActivation(in_channels, layers[0].out_channels, stride=stem_stride,
                                         norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
        init_weights(layers[0])
        self.stem = nn.Sequential(*layers[:2])
        stages = stage_layers(setting, stem_stride)
        self.stages = nn.ModuleList(nn.Sequential(*(layers[i] for i in group)) for group in stages.values())
        self.stage_reductions = list(stages)
        self.stage_channels = [layers[group[-1]].out_channels for group in stages.values()]
        self.dropout, self.fc = net.classifier

    def embed(self, last: torch.Tensor) -> torch.Tensor:
        """GAP, then the classifier's dropout (active in training only): exactly what ``fc`` reads."""
        return self.dropout(last.mean(dim=(2, 3)))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: PositiveInt, in_channels: PositiveInt = 3, width_mult: Positive = 1.0,
                dropout: Fraction = 0.0) -> MobileNetV2Backbone:
    """MobileNetV2 for 32x32 inputs (stem and 24-channel group at stride 1), 4 stages @32/16/8/4."""
    return MobileNetV2Backbone(num_classes, in_channels, 1, CIFAR_SETTING, width_mult, dropout, name="mobilenetv2")
