"""CIFAR DenseNet-BC (Huang et al. 2017): 3x3 stem conv to 2·growth channels (no max-pool), four dense
blocks of bottleneck layers BN-ReLU-conv1x1(4·growth)-BN-ReLU-conv3x3(growth), transitions
BN-ReLU-conv1x1(compression 0.5)-avgpool2, final BN-ReLU, GAP, FC.

Stage ``i`` is dense block ``i``, preceded by its transition for ``i > 0``; ``F_1..F_3`` are the raw
concatenated maps (the next layer pre-activates them) and the last stage ends with the final BN-ReLU,
so ``GAP(F_4)`` is what ``fc`` reads. ``densenet121`` with K=100 has 7,048,548 parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PositiveInt
from .base import Backbone, init_weights
from .registry import register_model


class DenseLayer(nn.Module):
    """Bottleneck layer: appends ``growth`` new channels to its input."""

    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


def transition(in_planes: int, out_planes: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(inplace=True),
                         nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.AvgPool2d(2))


class CifarDenseNet(Backbone):
    def __init__(self, blocks: list[int], num_classes: int, in_channels: int = 3, growth: int = 32,
                 compression: float = 0.5, name: str = "densenet"):
        super().__init__()
        self.name = name
        planes = 2 * growth
        self.stem = nn.Conv2d(in_channels, planes, 3, 1, 1, bias=False)
        stages, self.stage_channels = [], []
        for i, n in enumerate(blocks):
            layers = []
            if i > 0:
                out = int(planes * compression)
                layers.append(transition(planes, out))
                planes = out
            for _ in range(n):
                layers.append(DenseLayer(planes, growth))
                planes += growth
            if i == len(blocks) - 1:
                layers += [nn.BatchNorm2d(planes), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*layers))
            self.stage_channels.append(planes)
        self.stages = nn.ModuleList(stages)
        self.stage_reductions = [2**i for i in range(len(blocks))]
        self.fc = nn.Linear(planes, num_classes)
        init_weights(self)


@register_model("densenet121")
def densenet121(num_classes: PositiveInt, in_channels: PositiveInt = 3, growth: PositiveInt = 32) -> CifarDenseNet:
    """DenseNet-121 for 32x32 inputs: blocks 6/12/24/16, growth rate ``growth`` (32)."""
    return CifarDenseNet([6, 12, 24, 16], num_classes, in_channels, growth, name="densenet121")
