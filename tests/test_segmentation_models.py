"""Segmenters: BiFPNSeg's maths, pyramid shapes (EfficientNet-B0 and a dilated encoder), grey input, parameter
counts."""
import pytest
import torch
import torch.nn.functional as F

from selfkd.models import create_model
from selfkd.models.segmentation import BiFPNSeg


def _unit_identity(layer: BiFPNSeg) -> None:
    """Every depthwise conv weight 1 and BN in eval with fresh statistics: each unit is ReLU(x / √(1 + eps))."""
    layer.eval()
    for module in layer.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.ones_(module.weight)


@pytest.mark.parametrize("sizes", [
    [(9, 13), (5, 7), (3, 4), (2, 2), (1, 1), (1, 1)],  # EfficientNet-like odd sizes
    [(8, 8), (4, 4), (4, 4), (4, 4), (2, 2), (1, 1)],  # dilated encoder: three levels at one stride
])
@pytest.mark.parametrize("top_down_only", [False, True])
def test_bifpnseg_sums_levels_with_bilinear_up_and_nearest_down(sizes, top_down_only):
    torch.manual_seed(0)
    layer = BiFPNSeg(4, top_down_only=top_down_only)
    _unit_identity(layer)
    inputs = [torch.rand(2, 4, h, w) for h, w in sizes]
    out = layer(inputs)

    def unit(x):
        return F.relu(x / (1 + 1e-5) ** 0.5)

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    td = [None] * 6
    td[5] = unit(inputs[5])
    for i in range(4, -1, -1):
        td[i] = unit(inputs[i] + up(td[i + 1], inputs[i]))
    expected = td
    if not top_down_only:
        expected = [td[0]]
        for i in range(1, 6):
            down = F.interpolate(expected[-1], size=sizes[i], mode="nearest")
            expected.append(unit(inputs[i] + td[i] + down))
    assert [tuple(o.shape[-2:]) for o in out] == sizes
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want)
    # 6 top-down units (+ 5 bottom-up), each a 1×1 depthwise conv (4 weights) and a BN (8 parameters)
    assert sum(p.numel() for p in layer.parameters()) == (6 if top_down_only else 11) * 12


def test_effb0_segmenter_pyramid_and_logit_shapes():
    torch.manual_seed(0)
    model = create_model("frskd_seg_effb0", num_classes=21)
    assert (model.task, model.num_classes, model.pyramid_channels, model.head_channels) == ("segmentation", 21, 64, 256)
    assert model.encoder.channels == [24, 40, 80, 320]
    x = torch.randn(2, 3, 80, 112)
    feats = model.encoder(x)
    # the official encoder's padding is fixed for a 224x224 input: the last stride-2 conv (5x5) pads 1 + 2 as for its
    # nominal 14x14 input, so the 5x7 map becomes 2x3 (TensorFlow's "SAME" would give 3x4)
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 20, 28), (40, 10, 14), (80, 5, 7), (320, 2, 3)]
    logits, pyramid = model(x)
    assert logits.shape == (2, 21, 80, 112)
    assert [tuple(p.shape) for p in pyramid] == [(2, 64, 20, 28), (2, 64, 10, 14), (2, 64, 5, 7), (2, 64, 2, 3),
                                                  (2, 64, 1, 2), (2, 64, 1, 1)]
    torchvision_style = create_model("frskd_seg_effb0", num_classes=21, encoder_style="torchvision")
    assert [tuple(f.shape[1:]) for f in torchvision_style.encoder(x)][-1] == (320, 3, 4)

    def eps(module):
        return {m.eps for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)}

    assert eps(model.fpn) == eps(model.head) == {1e-4} and eps(model.bifpn) == {1e-5}  # as the official code


def test_dilated_resnet50_encoder_puts_several_levels_at_one_stride():
    torch.manual_seed(0)
    model = create_model("frskd_seg_resnet50", num_classes=5, in_channels=1, output_stride=8)
    logits, pyramid = model(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 5, 64, 64)
    assert [tuple(p.shape[1:]) for p in pyramid] == [(64, 16, 16), (64, 8, 8), (64, 8, 8), (64, 8, 8), (64, 4, 4),
                                                      (64, 2, 2)]


@pytest.mark.parametrize("name", ["frskd_seg_effb0", "lraspp_mobilenet_v3_large"])
def test_grey_input_adapts_the_first_conv(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=11, in_channels=1).eval()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1
    logits, pyramid = model(torch.randn(1, 1, 64, 64))
    assert logits.shape == (1, 11, 64, 64)
    assert len(pyramid) == (6 if name.startswith("frskd") else 0)


# K = 21. frskd_seg_effb0: the official EfficientDet-style segmenter counts 4,052,497 parameters without its
# self-teacher and its two unused smoothing convs (encoder 3,595,388 = torchvision's efficientnet_b0 features up
# to the 320-channel stage; FPN 252,032; 3 BiFPNSeg 8,448; head 196,629); selfkd drops the 2,752 conv biases
# that feed a BN. The torchvision references match torchvision's published counts less the auxiliary head
# (deeplabv3_resnet50 42,004,074 and fcn_resnet50 35,322,218 with it; lraspp has none: 3,221,538).
PARAMETERS = {
    "frskd_seg_effb0": 4_049_745,
    "frskd_seg_effb1": 6_726_429,
    "frskd_seg_effb2": 8_047_015,
    "frskd_seg_resnet18": 11_773_205,
    "frskd_seg_resnet50": 25_173_781,
    "lraspp_mobilenet_v3_large": 3_221_538,
    "deeplabv3_resnet50": 39_638_869,
    "fcn_resnet50": 32_957_013,
}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_counts(name):
    model = create_model(name, num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
    if name == "frskd_seg_effb0":
        assert sum(p.numel() for p in model.encoder.parameters()) == 3_595_388


def test_segmenters_are_listed_under_their_task():
    from selfkd.models import list_models

    assert sorted(list_models("segmentation")) == sorted(PARAMETERS)
    assert not set(list_models()) & set(PARAMETERS)  # classification (the default) lists backbones only


def test_encoder_taps_and_stem_options():
    """By default C2..C4 are taken after the first block of the 24/40/80-channel stages (FRSKD's code);
    taps="stage_end" takes them after the last (same shapes and parameters, other features). stem_activation=False
    leaves the stem's BN output unrectified, as FRSKD's code does (it can be negative; SiLU's output is never below
    −0.279)."""
    from selfkd.models.segmentation import efficientnet_encoder

    torch.manual_seed(0)
    default = efficientnet_encoder("b0", 3)
    torch.manual_seed(0)
    stage_end = efficientnet_encoder("b0", 3, taps="stage_end", stem_activation=False)
    x = torch.randn(2, 3, 64, 64)
    a, b = default.eval()(x), stage_end.eval()(x)
    assert [t.shape for t in a] == [t.shape for t in b]
    assert sum(p.numel() for p in default.parameters()) == sum(p.numel() for p in stage_end.parameters())
    assert default.taps == [(2, 0), (3, 0), (4, 0), (7, 0)] and stage_end.taps == [(2, 1), (3, 1), (4, 2), (7, 0)]
    assert not torch.allclose(a[0], b[0])
    with torch.no_grad():
        assert stage_end.features[0](x).min() < -0.3
        assert default.features[0](x).min() >= -0.279


@pytest.mark.parametrize("version, pads", [
    ("b0", [(0, 1), (0, 1), (1, 2), (0, 1), (1, 2)]),  # stem, then blocks 1, 3, 5, 11: inputs 224, 112, 56, 28, 14
    ("b2", [(0, 1), (0, 1), (2, 2), (1, 1), (2, 2)]),  # inputs 260, 130, 65, 33, 17: odd sizes pad symmetrically
])
def test_official_encoder_is_efficientnet_pytorchs_network(version, pads):
    """The default encoder is the network FRSKD's code runs (efficientnet_pytorch's): TensorFlow "SAME" padding on
    the stride-2 convs computed for the nominal input size (224/260), BN eps 1e-3 and momentum 0.01, and no
    stochastic depth, so two training-mode forwards agree; encoder_style="torchvision" is torchvision's network."""
    from selfkd.models.segmentation import PaddedConv2d, efficientnet_encoder

    torch.manual_seed(0)
    official = efficientnet_encoder(version, 3)
    strided = [m for m in official.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert [type(m) for m in strided] == [PaddedConv2d] * 5
    assert [m.pads for m in strided] == [p * 2 for p in pads] and all(m.padding == (0, 0) for m in strided)
    norms = [m for m in official.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in norms} == {(1e-3, 0.01)}
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(official.train()(x)[-1], official(x)[-1])
    torchvision_style = efficientnet_encoder(version, 3, encoder_style="torchvision")
    assert not any(isinstance(m, PaddedConv2d) for m in torchvision_style.modules())
    assert {(m.eps, m.momentum) for m in torchvision_style.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {
        (1e-5, 0.1)}
    assert not torch.equal(torchvision_style.train()(x)[-1], torchvision_style(x)[-1])  # stochastic depth
    assert sum(p.numel() for p in official.parameters()) == sum(p.numel() for p in torchvision_style.parameters())
