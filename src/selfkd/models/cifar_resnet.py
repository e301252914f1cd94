"""CIFAR-style ResNets: 3x3 stem, no max-pool, four stages (He et al. 2016; pre-activation variant He et al. 2016b).

``cifar_resnet18`` with K=100 has 11,220,132 parameters. ``preact_resnet18`` is the network of the CS-KD,
BAKE and Self-KD-Lib code (``CIFAR_ResNet18``): stem conv 3×3 → BN → ReLU, pre-activation blocks, and no
BN/ReLU after the last stage; 11,217,444 parameters with K=100 (11,217,316 with ``stem="conv"``).
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import nn

from ..registry import PositiveInt
from .base import Backbone, init_weights
from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation basic block as in the CS-KD/BAKE/Zipf code: every shortcut, identity included,
    takes the pre-activated input ``ReLU(BN(x))``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def make_stage(block: type[nn.Module], in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = []
    for s in [stride] + [1] * (blocks - 1):
        layers.append(block(in_planes, planes, s))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers)


class CifarResNet(Backbone):
    """``stem="conv_bn_relu"``: conv 3×3 → BN → ReLU; ``stem="conv"``: the conv alone."""

    def __init__(self, block, blocks: list[int], num_classes: int, in_channels: int = 3, width: int = 64,
                 stem: Literal["conv_bn_relu", "conv"] = "conv_bn_relu", name: str = "cifar_resnet"):
        super().__init__()
        self.name, self.block, self.width = name, block, width
        layers = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)]
        if stem == "conv_bn_relu":
            layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*layers)
        planes = [width * 2**i for i in range(len(blocks))]
        self.stage_channels = [p * block.expansion for p in planes]
        self.stage_reductions = [2**i for i in range(len(blocks))]
        in_planes = [width] + self.stage_channels[:-1]
        self.stages = nn.ModuleList(
            make_stage(block, in_planes[i], planes[i], n, 1 if i == 0 else 2) for i, n in enumerate(blocks)
        )
        self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        init_weights(self)

    def make_stage(self, index: int, blocks: int) -> nn.Module:
        in_planes = self.width if index == 0 else self.stage_channels[index - 1]
        stage = make_stage(self.block, in_planes, self.width * 2**index, blocks, 1 if index == 0 else 2)
        init_weights(stage)
        return stage


def _resnet(block, blocks, name):
    def factory(num_classes: PositiveInt, in_channels: PositiveInt = 3, width: PositiveInt = 64) -> CifarResNet:
        return CifarResNet(block, blocks, num_classes, in_channels, width, name=name)

    factory.__name__ = name
    factory.__doc__ = f"{name}: CIFAR-style ResNet, blocks {blocks}, base width `width` (64)."
    return register_model(name)(factory)


cifar_resnet18 = _resnet(BasicBlock, [2, 2, 2, 2], "cifar_resnet18")
cifar_resnet34 = _resnet(BasicBlock, [3, 4, 6, 3], "cifar_resnet34")
cifar_resnet50 = _resnet(Bottleneck, [3, 4, 6, 3], "cifar_resnet50")
cifar_resnet101 = _resnet(Bottleneck, [3, 4, 23, 3], "cifar_resnet101")


@register_model("preact_resnet18")
def preact_resnet18(num_classes: PositiveInt, in_channels: PositiveInt = 3, width: PositiveInt = 64,
                    stem: Literal["conv_bn_relu", "conv"] = "conv_bn_relu") -> CifarResNet:
    """preact_resnet18: pre-activation CIFAR ResNet-18 of the CS-KD/BAKE/Self-KD-Lib code, base width `width`
    (64); `stem="conv"` drops the stem's BN and ReLU."""
    return CifarResNet(PreActBlock, [2, 2, 2, 2], num_classes, in_channels, width, stem=stem, name="preact_resnet18")
