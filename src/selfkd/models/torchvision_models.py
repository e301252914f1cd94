"""ImageNet-style backbones built by torchvision's constructors, re-exposed as stem / stages / fc. They start from
random weights, or from torchvision's ImageNet weights (or any in the same layout) with ``model.pretrained``
(:mod:`selfkd.models.pretrained`; each declares where its network's tensors sit).

ResNets (He et al. 2016; ResNeXt: Xie et al. 2017): stem = conv7x7/2, BN, ReLU, max-pool/2; stages =
``layer1..layer4`` (post-ReLU outputs), reductions 4/8/16/32. Parameters with K=1000, as torchvision
documents them: resnet18 11,689,512, resnet34 21,797,672, resnet50 25,557,032, resnext50_32x4d 25,028,904,
mobilenetv2_imagenet 3,504,872. ``in_channels`` other than 3 replaces the first conv.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import resnet as tv_resnet

from ..registry import Fraction, Positive, PositiveInt
from .base import Backbone, init_weights
from .mobilenetv2 import IMAGENET_SETTING, MobileNetV2Backbone, stage_layers
from .pretrained import Network
from .registry import register_model

# torchvision's ResNet names -> TorchvisionResNet's
RESNET_PLACES = (("conv1.", "stem.0."), ("bn1.", "stem.1."), *((f"layer{i}.", f"stages.{i - 1}.") for i in range(1, 5)),
                 ("fc.", "fc."))
# torchvision's MobileNetV2 names -> MobileNetV2Backbone's (stem: features 0 and 1; stages grouped by resolution)
MOBILENETV2_PLACES = (("features.0.", "stem.0."), ("features.1.", "stem.1."),
                      *((f"features.{i}.", f"stages.{s}.{b}.")
                        for s, layers in enumerate(stage_layers(IMAGENET_SETTING, 2).values())
                        for b, i in enumerate(layers)),
                      ("classifier.1.", "fc."))


class TorchvisionResNet(Backbone):
    def __init__(self, constructor: Callable[..., tv_resnet.ResNet], num_classes: int, in_channels: int = 3,
                 name: str = "resnet"):
        super().__init__()
        self.name = name
        net = constructor(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            init_weights(net.conv1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.fc = net.fc
        self.block, self.groups, self.width_per_group = type(net.layer1[0]), net.groups, net.base_width
        self.stage_channels = [64 * 2**i * self.block.expansion for i in range(4)]
        self.stage_reductions = [4, 8, 16, 32]

    def make_stage(self, index: int, blocks: int) -> nn.Module:
        """``layer{index+1}`` of a fresh torchvision ResNet whose layer ``index`` has ``blocks`` blocks."""
        layers = [1, 1, 1, 1]
        layers[index] = blocks
        net = tv_resnet.ResNet(self.block, layers, groups=self.groups, width_per_group=self.width_per_group)
        return net.get_submodule(f"layer{index + 1}")


def _resnet(constructor: Callable[..., tv_resnet.ResNet], name: str):
    def factory(num_classes: PositiveInt, in_channels: PositiveInt = 3) -> TorchvisionResNet:
        return TorchvisionResNet(constructor, num_classes, in_channels, name=name)

    factory.__name__ = name
    factory.__doc__ = (f"{name}: torchvision's ImageNet {name} (7x7 stem + max-pool); model.pretrained: imagenet "
                       "starts from torchvision's weights.")
    return register_model(name, weights=(Network(name, RESNET_PLACES),))(factory)


resnet18 = _resnet(tv_resnet.resnet18, "resnet18")
resnet34 = _resnet(tv_resnet.resnet34, "resnet34")
resnet50 = _resnet(tv_resnet.resnet50, "resnet50")
resnext50_32x4d = _resnet(tv_resnet.resnext50_32x4d, "resnext50_32x4d")


@register_model("mobilenetv2_imagenet", weights=(Network("mobilenet_v2", MOBILENETV2_PLACES),))
def mobilenetv2_imagenet(num_classes: PositiveInt, in_channels: PositiveInt = 3, width_mult: Positive = 1.0,
                         dropout: Fraction = 0.2) -> MobileNetV2Backbone:
    """torchvision's ImageNet MobileNetV2 (stem stride 2), stages @4/8/16/32 (see ``mobilenetv2``)."""
    return MobileNetV2Backbone(num_classes, in_channels, 2, IMAGENET_SETTING, width_mult, dropout,
                               name="mobilenetv2_imagenet")
