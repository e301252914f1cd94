"""CIFAR ResNeXt-29 (Xie et al. 2017, Sec. 5.2): 3x3 stem conv to 64 + BN-ReLU, three stages of three
bottleneck blocks (output 256/512/1024 channels, strides 1/2/2), GAP, FC.

A block is conv1x1 -> grouped conv3x3 (cardinality C, stride here) -> conv1x1, each followed by BN,
ReLU after the residual sum, a conv1x1-BN shortcut when the shape changes (torchvision's
``Bottleneck`` with ``groups``). Its grouped width is C·d·2^i in stage i (8x64d: 512/1024/2048).
``resnext29_8x64d`` has 34,518,948 parameters with K=100 and 34,426,698 with K=10 (paper: 34.4 M).
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck

from ..registry import PositiveInt
from .cifar_resnet import CifarResNet
from .registry import register_model


class ResNeXtBlock8x64d(Bottleneck):
    """Bottleneck with cardinality 8 and bottleneck width 64 for ``planes`` = 64 (stage 1)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        out_planes = planes * self.expansion
        shortcut = None
        if stride != 1 or in_planes != out_planes:
            shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False),
                                     nn.BatchNorm2d(out_planes))
        super().__init__(in_planes, planes, stride, shortcut, groups=8, base_width=64)


@register_model("resnext29_8x64d")
def resnext29_8x64d(num_classes: PositiveInt, in_channels: PositiveInt = 3) -> CifarResNet:
    """ResNeXt-29 8x64d for 32x32 inputs (stage outputs 256/512/1024, post-ReLU)."""
    return CifarResNet(ResNeXtBlock8x64d, [3, 3, 3], num_classes, in_channels, width=64, name="resnext29_8x64d")
