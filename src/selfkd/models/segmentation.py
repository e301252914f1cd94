"""Segmenters: ``forward(x) -> (logits, pyramid)``, ``logits`` ``(B, K, H, W)`` at the input size.

The FRSKD segmenter (Ji et al., "Refine Myself by Teaching Myself", CVPR 2021, segmentation code):
encoder stages ``C2..C5`` → FPN to six ``channels``-wide levels ``P2..P7`` (64 for B0, 88/112 for B1/B2) →
3 × :class:`BiFPNSeg` → pyramid ``S1`` → head on ``S1``'s finest level (``cbr3(channels→head_channels)``, 256 by
default, then a 3×3 conv to K), upsampled bilinearly to the input size.
``pyramid`` is ``S1`` (FRSKD's self-teacher refines it). Encoders are EfficientNet-B0/B1/B2 (torchvision's modules
and names) or ResNet-18/50 (torchvision's), randomly initialised, or from torchvision's ImageNet weights,
efficientnet_pytorch's, or a selfkd classification run with ``model.pretrained`` (:mod:`selfkd.models.pretrained`;
the decoder stays new). The reference models wrap torchvision's segmentation networks and return an empty pyramid.

The EfficientNet segmenters are the official one (``tests/test_fidelity_frskd.py`` compares them with it): the
encoder is the network efficientnet_pytorch builds (TensorFlow "SAME" padding fixed for the nominal input size, BN
eps 1e-3, no stochastic depth: :func:`efficientnet_encoder`) tapped where FRSKD's code taps it, the FPN and head BNs
use eps 1e-4, with one fix: the stem keeps EfficientNet's activation after its BN (the official code takes the stem
as ``Sequential(conv, bn)`` and so drops it; ``stem_activation=False`` reproduces that). Options:
``encoder_style="torchvision"`` (torchvision's network, what its pretrained weights were trained with),
``taps="stage_end"``. The official code starts from efficientnet_pytorch's ImageNet weights (``model.pretrained``: that
file, or ``imagenet``, torchvision's weights, best with ``encoder_style="torchvision"``). Differences without an
option: biases of convs that feed a BN are dropped (the BN cancels them); the FPN and head BNs use PyTorch's
default momentum (the official 0.997 is TensorFlow's convention, which in PyTorch keeps almost only the
last batch in the running statistics that evaluation uses); the FPN's two smoothing convs, built but never used,
are left out.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PositiveInt
from .pretrained import Network
from .registry import register_model

EFFICIENTNET_PYRAMID_CHANNELS = {"b0": 64, "b1": 88, "b2": 112}  # the official code's width per encoder


NECK_BN_EPS = 1e-4  # the official FPN and heads' BN eps (its BiFPNSeg BNs keep PyTorch's 1e-5)


def cbr(cin: int, cout: int, kernel: int, stride: int = 1, eps: float = 1e-5) -> nn.Sequential:
    """``cbr(k)``: k×k conv (no bias) → BN (``eps``) → ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout, eps=eps),
                         nn.ReLU(inplace=True))


def resize_to(x: torch.Tensor, like: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``x`` resampled to the spatial size of ``like`` (exactly the identity when the sizes match). No Python branch
    on sizes, so a traced or exported model follows the sizes of any input."""
    if mode == "nearest":
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Segmenter contract: ``forward(x) -> (logits (B, K, H, W), pyramid)``.

    ``pyramid_channels``/``head_channels`` are 0 for models without a feature pyramid (``pyramid == []``).
    """

    task = "segmentation"
    name = "segmenter"
    num_classes: int
    pyramid_channels: int = 0
    head_channels: int = 0


class Encoder(nn.Module):
    """A torchvision network cut into four stages; returns ``[C2, C3, C4, C5]`` with ``channels`` channels."""

    def __init__(self, stages: list[nn.Module], channels: list[int]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def replace_first_conv(net: nn.Module, in_channels: int) -> None:
    """Give ``net``'s first convolution ``in_channels`` inputs (e.g. 1 for grey images), freshly initialised."""
    if in_channels == 3:
        return
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    parent, _, attr = name.rpartition(".")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out")  # as torchvision initialises its convs
    setattr(net.get_submodule(parent), attr, new)


class EfficientNetEncoder(nn.Module):
    """An EfficientNet's ``features`` (stem and the seven MBConv stages, torchvision's layout and names) read at four
    taps: returns the outputs of blocks ``taps`` = ``[(stage, block), ...]`` (``features[stage][block]``)."""

    def __init__(self, features: nn.Sequential, taps: list[tuple[int, int]]):
        super().__init__()
        self.features = features
        self.taps = list(taps)
        self.channels = [features[s][b].out_channels for s, b in self.taps]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.features[0](x)
        feats = []
        for s in range(1, len(self.features)):
            for b, block in enumerate(self.features[s]):
                x = block(x)
                if (s, b) in self.taps:
                    feats.append(x)
        return feats


NOMINAL_SIZE = {"b0": 224, "b1": 240, "b2": 260}  # efficientnet_pytorch's image_size, which fixes its padding


class PaddedConv2d(nn.Conv2d):
    """A convolution with fixed zero padding ``pads = (left, right, top, bottom)`` before it and none of its own."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None)
        self.load_state_dict(conv.state_dict())
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))


def same_padding_(features: nn.Module, size: int) -> None:
    """Give the stride-2 convs of ``features`` efficientnet_pytorch's padding: TensorFlow's "SAME" for a
    ``size``² input, computed once (``(⌈n/2⌉ − 1)·2 + k − n`` in all, the odd pixel right/bottom) and then fixed for
    every input size, as ``EfficientNet.from_name``/``from_pretrained`` build it (``Conv2dStaticSamePadding``).
    Stride-1 convs keep their symmetric padding, which is "SAME" for odd kernels."""
    strided = [(parent, name, child) for parent in features.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Conv2d) and child.stride != (1, 1)]
    for parent, name, conv in strided:  # in forward order
        total = max((-(-size // 2) - 1) * 2 + conv.kernel_size[0] - size, 0)
        setattr(parent, name, PaddedConv2d(conv, (total // 2, total - total // 2) * 2))
        size = -(-size // 2)


def efficientnet_encoder(version: str, in_channels: int, taps: str = "official", stem_activation: bool = True,
                         encoder_style: str = "efficientnet_pytorch") -> EfficientNetEncoder:
    """EfficientNet-``version`` (b0/b1/b2) in torchvision's layout, to the 320-channel stage (B2: 352), taps at
    strides 4/8/16/32; the 1280-channel head conv and the classifier are dropped.

    ``taps="official"``: C2..C4 after the *first* block of the 24-, 40- and 80-channel stages (B2: 24/48/88), as
    FRSKD's code slices the blocks; ``"stage_end"``: after their last. ``stem_activation=False`` drops the stem's
    activation after its BN, as FRSKD's code does. ``encoder_style="efficientnet_pytorch"`` is the network FRSKD's
    code runs: :func:`same_padding_` on the stride-2 convs, BN eps 1e-3 and momentum 0.01, no stochastic depth (it
    calls the blocks without a drop rate); ``"torchvision"`` is torchvision's: symmetric padding, BN eps 1e-5 and
    momentum 0.1, stochastic depth up to 0.2 (what torchvision's pretrained weights were trained with)."""
    import functools

    import torchvision.models as tvm

    options = {} if encoder_style == "torchvision" else {
        "stochastic_depth_prob": 0.0, "norm_layer": functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)}
    net = getattr(tvm, f"efficientnet_{version}")(weights=None, **options)
    replace_first_conv(net, in_channels)
    features = net.features[:8]  # stem + 7 stages; features[8] is the 1280-channel head conv
    if encoder_style != "torchvision":
        same_padding_(features, NOMINAL_SIZE[version])
    if not stem_activation:
        features[0][2] = nn.Identity()  # Conv2dNormActivation: conv, BN, activation
    ends = [(s, len(features[s]) - 1) for s in (2, 3, 4, 7)]
    return EfficientNetEncoder(features, ends if taps == "stage_end" else [(2, 0), (3, 0), (4, 0), ends[-1]])


def resnet_encoder(depth: int, in_channels: int, output_stride: int = 32) -> Encoder:
    """ResNet-``depth``: stem + layer1, layer2, layer3, layer4. ``output_stride`` 16 or 8 dilates the last one or
    two layers instead of striding them (bottleneck ResNets only, as in torchvision)."""
    import torchvision.models as tvm

    dilate = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
    net = getattr(tvm, f"resnet{depth}")(weights=None, replace_stride_with_dilation=dilate)
    replace_first_conv(net, in_channels)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
    expansion = net.layer1[0].expansion
    return Encoder([stem, net.layer2, net.layer3, net.layer4], [expansion * c for c in (64, 128, 256, 512)])


class FPN(nn.Module):
    """Six levels of ``channels`` from ``C2..C5``: ``P5 = cbr1(C5)``, ``P6 = cbr3/2(C5)``, ``P7 = cbr3/2(P6)``,
    ``P_l = up(P_{l+1}) + cbr1(C_l)`` for l = 4, 3, 2 (bilinear, to the size of ``C_l``); BN eps 1e-4 (official)."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(cbr(c, channels, 1, eps=NECK_BN_EPS) for c in in_channels)
        self.p6 = cbr(in_channels[-1], channels, 3, stride=2, eps=NECK_BN_EPS)
        self.p7 = cbr(channels, channels, 3, stride=2, eps=NECK_BN_EPS)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = [self.lateral[-1](feats[-1])]
        for lateral, c in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            lat = lateral(c)
            levels.insert(0, resize_to(levels[0], lat) + lat)
        p6 = self.p6(feats[-1])
        return levels + [p6, self.p7(p6)]


def depthwise_unit(channels: int) -> nn.Sequential:
    """A ``BiFPNSeg`` "conv": 1×1 depthwise conv (a per-channel scale, no spatial mixing) → BN → ReLU."""
    return nn.Sequential(nn.Conv2d(channels, channels, 1, groups=channels, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True))


class BiFPNSeg(nn.Module):
    """One BiFPN layer of FRSKD's segmentation code over levels ``P_1..P_n`` (finest first), plain-sum fusion::

        U_n = u_n(P_n);   U_i = u_i(P_i + up(U_{i+1}))                 i = n−1 … 1   (top-down)
        O_1 = U_1;        O_i = d_i(P_i + U_i + down(O_{i−1}))          i = 2 … n     (bottom-up)

    ``u``/``d`` are :func:`depthwise_unit` s; ``up`` is bilinear, ``down`` nearest, both to the target level's
    size (so a dilated encoder's equal-size levels need no special case). Returns ``[O_1..O_n]``, or
    ``[U_1..U_n]`` when ``top_down_only`` (the self-teacher's last layer).
    """

    def __init__(self, channels: int, levels: int = 6, top_down_only: bool = False):
        super().__init__()
        self.top_down_only = top_down_only
        self.up = nn.ModuleList(depthwise_unit(channels) for _ in range(levels))
        self.down = nn.ModuleList() if top_down_only else nn.ModuleList(
            depthwise_unit(channels) for _ in range(levels - 1))

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(inputs)
        top_down = [None] * n
        top_down[-1] = self.up[-1](inputs[-1])
        for i in range(n - 2, -1, -1):
            top_down[i] = self.up[i](inputs[i] + resize_to(top_down[i + 1], inputs[i]))
        if self.top_down_only:
            return top_down
        out = [top_down[0]]
        for i in range(1, n):
            out.append(self.down[i - 1](inputs[i] + top_down[i] + resize_to(out[-1], inputs[i], "nearest")))
        return out


class SegmentationHead(nn.Sequential):
    """``cbr3(channels → hidden)`` (BN eps 1e-4, official) then a 3×3 conv to K classes; the logits are upsampled to
    ``size`` (bilinear)."""

    def __init__(self, channels: int, hidden: int, num_classes: int):
        super().__init__(cbr(channels, hidden, 3, eps=NECK_BN_EPS), nn.Conv2d(hidden, num_classes, 3, padding=1))

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class FRSKDSegmenter(Segmenter):
    """Encoder → :class:`FPN` → 3 × :class:`BiFPNSeg` → :class:`SegmentationHead` on the finest level."""

    def __init__(self, encoder: Encoder, num_classes: int, channels: int, head_channels: int = 256,
                 name: str = "frskd_seg"):
        super().__init__()
        self.name, self.num_classes = name, num_classes
        self.pyramid_channels, self.head_channels = channels, head_channels
        self.encoder = encoder
        self.fpn = FPN(encoder.channels, channels)
        self.bifpn = nn.Sequential(*(BiFPNSeg(channels) for _ in range(3)))
        self.head = SegmentationHead(channels, head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pyramid = self.bifpn(self.fpn(self.encoder(x)))
        return self.head(pyramid[0], x.shape[-2:]), pyramid


class TorchvisionSegmenter(Segmenter):
    """A torchvision segmentation network (auxiliary head off): ``(net(x)["out"], [])``."""

    def __init__(self, net: nn.Module, num_classes: int, name: str):
        super().__init__()
        self.net, self.num_classes, self.name = net, num_classes, name

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.net(x)["out"], []


# --------------------------------------------------------------------------- registered models

# Where the tensors of torchvision's networks sit in these models (selfkd.models.pretrained.Network).
EFFICIENTNET_PLACES = tuple((f"features.{s}.", f"encoder.features.{s}.") for s in range(8))  # features.8: head conv
RESNET_ENCODER_PLACES = (("conv1.", "encoder.stages.0.0."), ("bn1.", "encoder.stages.0.1."),
                         ("layer1.", "encoder.stages.0.4."), ("layer2.", "encoder.stages.1."),
                         ("layer3.", "encoder.stages.2."), ("layer4.", "encoder.stages.3."))
RESNET_BACKBONE = Network("resnet50", tuple((f"{m}.", f"net.backbone.{m}.") for m in (
    "conv1", "bn1", "layer1", "layer2", "layer3", "layer4")), ("fc.",))
TORCHVISION_BACKBONES = {  # the ImageNet network of each reference's backbone and where it sits
    "deeplabv3_resnet50": RESNET_BACKBONE, "fcn_resnet50": RESNET_BACKBONE,
    "lraspp_mobilenet_v3_large": Network("mobilenet_v3_large", tuple((f"features.{i}.", f"net.backbone.{i}.")
                                                                      for i in range(17)), ("classifier.",)),
}


def _efficientnet_segmenter(version: str):
    name = f"frskd_seg_eff{version}"

    def factory(num_classes: PositiveInt, in_channels: PositiveInt = 3, channels: PositiveInt | None = None,
                head_channels: PositiveInt = 256, taps: Literal["official", "stage_end"] = "official",
                stem_activation: bool = True,
                encoder_style: Literal["efficientnet_pytorch", "torchvision"] = "efficientnet_pytorch"
                ) -> FRSKDSegmenter:
        channels = channels or EFFICIENTNET_PYRAMID_CHANNELS[version]
        encoder = efficientnet_encoder(version, in_channels, taps, stem_activation, encoder_style)
        return FRSKDSegmenter(encoder, num_classes, channels, head_channels, name)

    factory.__name__ = name
    factory.__doc__ = (f"{name}: FRSKD segmenter on EfficientNet-{version.upper()}; pyramid width "
                       f"`channels` ({EFFICIENTNET_PYRAMID_CHANNELS[version]}, the official value), head width "
                       "`head_channels` (256); the encoder is the official one (efficientnet_pytorch's network, "
                       "FRSKD's taps) except that its stem keeps its activation (`stem_activation=false` drops it, as "
                       "the official code does); `encoder_style=torchvision` for torchvision's network, "
                       "`taps=stage_end` to tap each stage's last block.")
    network = Network(f"efficientnet_{version}", EFFICIENTNET_PLACES, ("features.8.", "classifier."))
    return register_model(name, task="segmentation", weights=(network,))(factory)


frskd_seg_effb0 = _efficientnet_segmenter("b0")
frskd_seg_effb1 = _efficientnet_segmenter("b1")
frskd_seg_effb2 = _efficientnet_segmenter("b2")


@register_model("frskd_seg_resnet18", task="segmentation", weights=(Network("resnet18", RESNET_ENCODER_PLACES,
                                                                           ("fc.",)),))
def frskd_seg_resnet18(num_classes: PositiveInt, in_channels: PositiveInt = 3, channels: PositiveInt = 64,
                       head_channels: PositiveInt = 256) -> FRSKDSegmenter:
    """frskd_seg_resnet18: FRSKD segmenter on ResNet-18, strides 4/8/16/32."""
    return FRSKDSegmenter(resnet_encoder(18, in_channels), num_classes, channels, head_channels, "frskd_seg_resnet18")


@register_model("frskd_seg_resnet50", task="segmentation", weights=(Network("resnet50", RESNET_ENCODER_PLACES,
                                                                           ("fc.",)),))
def frskd_seg_resnet50(num_classes: PositiveInt, in_channels: PositiveInt = 3, channels: PositiveInt = 64,
                       head_channels: PositiveInt = 256, output_stride: Literal[32, 16, 8] = 32) -> FRSKDSegmenter:
    """frskd_seg_resnet50: FRSKD segmenter on ResNet-50; `output_stride` 16 or 8 dilates the last
    stages (several encoder levels at one stride)."""
    return FRSKDSegmenter(resnet_encoder(50, in_channels, output_stride), num_classes, channels, head_channels,
                          "frskd_seg_resnet50")


def _torchvision_segmenter(name: str):
    def factory(num_classes: PositiveInt, in_channels: PositiveInt = 3) -> TorchvisionSegmenter:
        import torchvision.models.segmentation as tvs

        options = {} if name.startswith("lraspp") else {"aux_loss": False}
        net = getattr(tvs, name)(weights=None, weights_backbone=None, num_classes=num_classes, **options)
        replace_first_conv(net, in_channels)
        return TorchvisionSegmenter(net, num_classes, name)

    factory.__name__ = name
    factory.__doc__ = (f"{name}: torchvision's {name} (no auxiliary head), a plain-CE reference; model.pretrained: "
                       "imagenet for its ImageNet backbone, COCO_WITH_VOC_LABELS_V1 for torchvision's whole network.")
    whole = Network(name, (("backbone.", "net.backbone."), ("classifier.", "net.classifier.")), ("aux_classifier.",))
    return register_model(name, task="segmentation", weights=(TORCHVISION_BACKBONES[name], whole))(factory)


lraspp_mobilenet_v3_large = _torchvision_segmenter("lraspp_mobilenet_v3_large")
deeplabv3_resnet50 = _torchvision_segmenter("deeplabv3_resnet50")
fcn_resnet50 = _torchvision_segmenter("fcn_resnet50")

