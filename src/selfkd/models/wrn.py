"""CIFAR Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016): 3x3 stem to 16 channels, three stages of
(d-4)/6 pre-activation wide basic blocks with 16k/32k/64k channels, final BN-ReLU, GAP, FC.

Stage outputs: ``F_1``, ``F_2`` are raw residual sums (pre-activation network); the last stage ends
with the final BN-ReLU, so ``GAP(F_3)`` is exactly what ``fc`` reads.

``variant="frskd"`` is the WRN of FRSKD's official code: its blocks have no pre-activation BN (ReLU of
the raw input) and every stage ends with BN-ReLU, so every ``F_i`` is post-ReLU. That code also holds
an unused 128-channel BN (256 parameters, counted in the 703,060 FRSKD reports for WRN-16-2, K=100); it is not
built here (a parameter without gradient breaks DDP), which leaves 702,804. With K=100 the standard
WRN-16-2 has 703,284 parameters and WRN-28-10 36,536,884.
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import nn

from ..registry import Fraction, PositiveInt
from .base import Backbone, init_weights
from .registry import register_model


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus the input, or a 1x1 conv of the
    pre-activated input when the shape changes. ``preact_bn=False`` drops the first BN (FRSKD's variant)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0, preact_bn: bool = True):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes) if preact_bn else nn.Identity()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(act)))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(Backbone):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                 variant: Literal["standard", "frskd"] = "standard", name: str = "wrn"):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        self.name, self.dropout, self.variant = name, dropout, variant
        self.blocks = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.stage_channels = [16 * widen * 2**i for i in range(3)]
        self.stage_reductions = [1, 2, 4]
        self.stages = nn.ModuleList(self._stage(i, self.blocks) for i in range(3))
        self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        init_weights(self)

    def _stage(self, index: int, blocks: int) -> nn.Sequential:
        in_planes = 16 if index == 0 else self.stage_channels[index - 1]
        planes, stride = self.stage_channels[index], 1 if index == 0 else 2
        standard = self.variant == "standard"
        layers = [WideBlock(in_planes if b == 0 else planes, planes, stride if b == 0 else 1, self.dropout, standard)
                  for b in range(blocks)]
        if not standard or index == 2:  # FRSKD: BN-ReLU after every stage; standard: final BN-ReLU only
            layers += [nn.BatchNorm2d(planes), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    def make_stage(self, index: int, blocks: int) -> nn.Module:
        stage = self._stage(index, blocks)
        init_weights(stage)
        return stage


@register_model("wrn_16_2")
def wrn_16_2(num_classes: PositiveInt, in_channels: PositiveInt = 3, dropout: Fraction = 0.0,
             variant: Literal["standard", "frskd"] = "standard") -> WideResNet:
    """WRN-16-2 (stages 32/64/128 channels, 2 blocks each); ``variant="frskd"`` = FRSKD's code."""
    return WideResNet(16, 2, num_classes, in_channels, dropout, variant, name="wrn_16_2")


@register_model("wrn_28_10")
def wrn_28_10(num_classes: PositiveInt, in_channels: PositiveInt = 3, dropout: Fraction = 0.0,
              variant: Literal["standard", "frskd"] = "standard") -> WideResNet:
    """WRN-28-10 (stages 160/320/640 channels, 4 blocks each); the paper trains it with dropout 0.3."""
    return WideResNet(28, 10, num_classes, in_channels, dropout, variant, name="wrn_28_10")
