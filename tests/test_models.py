"""Backbones: the contract (logits, stage features, fc reads GAP(F_n)), stage copies, parameter counts,
in_channels, and the timm wrapper with its error paths."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from selfkd import create_method, create_model, list_models
from selfkd.errors import ConfigError

# (num_classes, parameters). CIFAR models at K=100, ImageNet models at K=1000.
PARAMS = {
    "cifar_resnet18": (100, 11_220_132),  # as counted on the FRSKD code
    "cifar_resnet34": (100, 21_328_292),  # 21.3 M as reported for CIFAR-100 ResNet-34
    "cifar_resnet50": (100, 23_705_252),  # 23.7 M
    "cifar_resnet101": (100, 42_697_380),  # 42.7 M
    "preact_resnet18": (100, 11_217_444),  # CS-KD's and Self-KD-Lib's CIFAR_ResNet18
    "wrn_16_2": (100, 703_284),  # standard WRN; FRSKD's variant: see test_wrn_frskd_variant
    "wrn_28_10": (100, 36_536_884),  # 36.5 M (Zagoruyko & Komodakis, Table 4)
    # torchvision's densenet121 (7,978,856) with a 3x3 stem conv and no stem BN/pool, K=100
    "densenet121": (100, 7_978_856 - 3 * 64 * 49 + 3 * 64 * 9 - 2 * 64 - 1025 * 1000 + 1025 * 100),
    "resnext29_8x64d": (100, 34_518_948),  # 34,426,698 at K=10 = the paper's 34.4 M
    # torchvision's mobilenet_v2 (3,504,872): the strides differ, the weights only in the classifier
    "mobilenetv2": (100, 3_504_872 - 1281 * 1000 + 1281 * 100),
    # torchvision's documented counts
    "resnet18": (1000, 11_689_512),
    "resnet34": (1000, 21_797_672),
    "resnet50": (1000, 25_557_032),
    "resnext50_32x4d": (1000, 25_028_904),
    "mobilenetv2_imagenet": (1000, 3_504_872),
}
NO_STAGE_COPY = {"densenet121", "mobilenetv2", "mobilenetv2_imagenet"}
RAW_LAST_STAGE = {"preact_resnet18"}  # F_n is a raw residual sum (no final BN-ReLU in that network)
BIG = {"wrn_28_10", "resnext29_8x64d", "cifar_resnet101", "resnet50"}  # one forward, no stage copies (time)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_contract(model, x: torch.Tensor, num_classes: int):
    """forward -> (logits, feats); F_i has c_i channels at input/r_i; fc(embed(F_n)) = logits."""
    with torch.no_grad():
        logits, feats = model(x)
    assert logits.shape == (x.shape[0], num_classes)
    assert len(feats) == len(model.stage_channels) == len(model.stage_reductions)
    for f, c, r in zip(feats, model.stage_channels, model.stage_reductions):
        assert f.shape == (x.shape[0], c, -(-x.shape[2] // r), -(-x.shape[3] // r))
    with torch.no_grad():
        torch.testing.assert_close(model.fc(model.embed(feats[-1])), logits)
    return logits, feats


@pytest.mark.parametrize("name", list_models())
def test_backbone_contract(name):
    torch.manual_seed(0)
    num_classes, expected = PARAMS.get(name, (10, None))
    model = create_model(name, num_classes=num_classes).eval()
    if expected is not None:
        assert count(model) == expected
    size = 64 if model.stage_reductions[-1] >= 32 else 32
    x = torch.randn(2, 3, size, size)
    logits, feats = check_contract(model, x, num_classes)
    assert len(model.stages) == len(feats) and model.fc.out_features == num_classes
    with torch.no_grad():
        torch.testing.assert_close(model.embed(feats[-1]), feats[-1].mean(dim=(2, 3)))
    if name not in RAW_LAST_STAGE:  # the final activation belongs to the last stage: fc reads GAP(F_n)
        assert (feats[-1] >= 0).all()
    if name in NO_STAGE_COPY:
        with pytest.raises(ConfigError, match="stage copies"):
            model.make_stage(0, 1)
    elif name not in BIG:
        with torch.no_grad():
            inputs = [model.stem(x)] + feats[:-1]
            for i, stage_input in enumerate(inputs):
                copy = model.make_stage(i, 1).eval()
                assert not {id(p) for p in copy.parameters()} & {id(p) for p in model.parameters()}
                assert copy(stage_input).shape == feats[i].shape


@pytest.mark.parametrize("name, index, blocks", [("wrn_16_2", 2, 2), ("resnet18", 3, 2), ("cifar_resnet18", 1, 2)])
def test_stage_copy_with_the_original_block_count_matches_the_stage(name, index, blocks):
    model = create_model(name, num_classes=10)
    copy = model.make_stage(index, blocks)
    assert count(copy) == count(model.stages[index])
    assert count(model.make_stage(index, blocks + 1)) > count(copy)
    assert not any(torch.equal(a, b) for a, b in zip(copy.parameters(), model.stages[index].parameters())
                   if a.dim() > 1)  # freshly initialised, not copied weights


def test_wrn_frskd_variant():
    """FRSKD's WRN-16-2: no pre-activation BN in blocks, BN-ReLU after every stage. The spec's 703,060
    includes an unused 128-channel BN of that code (2·128 parameters) that is not built here."""
    model = create_model("wrn_16_2", num_classes=100, variant="frskd").eval()
    assert count(model) == 703_060 - 2 * 128
    standard = create_model("wrn_16_2", num_classes=100).eval()
    x = torch.randn(2, 3, 32, 32)
    _, feats = check_contract(model, x, 100)
    assert all((f >= 0).all() for f in feats)  # every stage ends with ReLU
    _, feats = check_contract(standard, x, 100)
    assert (feats[0] < 0).any() and (feats[-1] >= 0).all()  # raw residual sums, then the final BN-ReLU
    with torch.no_grad():
        copy = model.make_stage(0, 1)
        assert (copy(model.stem(x)) >= 0).all()
    with pytest.raises(ConfigError, match="variant"):
        create_model("wrn_16_2", num_classes=10, variant="paper")


def test_preact_resnet18_stem_is_conv_bn_relu_by_default_and_conv_alone_as_an_option():
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=100)
    conv_only = create_model("preact_resnet18", num_classes=100, stem="conv")
    assert count(model) - count(conv_only) == 2 * 64 == 11_217_444 - 11_217_316  # the stem BN's γ and β
    assert [type(m) for m in model.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in conv_only.stem] == [nn.Conv2d]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        conv = model.stem[0](x)
        out = model.stem(x)
    # BN in train mode (batch statistics, γ = 1, β = 0), then ReLU
    expected = ((conv - conv.mean(dim=(0, 2, 3), keepdim=True)) /
                torch.sqrt(conv.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5)).clamp(min=0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert (out >= 0).all() and (out == 0).any() and not (conv >= 0).all()
    with pytest.raises(ConfigError, match="stem"):
        create_model("preact_resnet18", num_classes=10, stem="bn")


@pytest.mark.parametrize("name, option, value", [("cifar_resnet18", "width", 0), ("preact_resnet18", "num_classes", 0),
                                                 ("wrn_16_2", "dropout", 1.5), ("mobilenetv2", "width_mult", 0.0)])
def test_options_outside_their_limits_are_refused(name, option, value):
    with pytest.raises(ConfigError, match=rf"Bad option for model '{name}': '{option}' must be .*\(got {value}\)"):
        create_model(name, **{"num_classes": 10, option: value})


@pytest.mark.parametrize("method", ["one", "dks", "mixskd"])
def test_stage_copy_methods_train_on_preact_resnet18(method):
    torch.manual_seed(0)
    model = create_model("preact_resnet18", num_classes=5, width=4)
    out = create_method(method, model).train()(torch.randn(4, 3, 16, 16), torch.arange(4))
    out.loss.backward()
    assert out.loss.isfinite() and model.stem[1].weight.grad.abs().sum() > 0  # the stem BN learns


@pytest.mark.parametrize("name", ["wrn_16_2", "densenet121", "mobilenetv2", "resnet18", "mobilenetv2_imagenet",
                                  "timm:resnet18"])
def test_in_channels(name):
    model = create_model(name, num_classes=5, in_channels=1).eval()
    size = model.stage_reductions[-1]  # the last stage at 1x1
    with torch.no_grad():
        logits, _ = model(torch.randn(1, 1, size, size))
    assert logits.shape == (1, 5)


def test_mobilenetv2_embedding_has_the_classifier_dropout_in_training_only():
    model = create_model("mobilenetv2", num_classes=10, dropout=0.5)
    last = torch.randn(4, 1280, 2, 2)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        dropped = model.embed(last)
        torch.manual_seed(0)
        torch.testing.assert_close(dropped, nn.functional.dropout(last.mean(dim=(2, 3)), 0.5))
        model.eval()
        torch.testing.assert_close(model.embed(last), last.mean(dim=(2, 3)))


# ---------------------------------------------------------------------------------------------- timm

@pytest.mark.parametrize("name, channels, reductions", [
    ("resnet18", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    ("mobilenetv3_small_050", [16, 8, 16, 24, 288], [2, 4, 8, 16, 32]),  # head: GAP -> conv 1024 -> fc
    ("mobilenetv2_050", [8, 16, 16, 48, 1280], [2, 4, 8, 16, 32]),  # F_n = conv_head output, not the 160-ch block
])
def test_timm_backbone_contract(name, channels, reductions):
    torch.manual_seed(0)
    model = create_model(f"timm:{name}", num_classes=10).eval()
    assert model.stage_channels == channels and model.stage_reductions == reductions
    assert model.num_classes == 10 and model.fc.out_features == 10
    x = torch.randn(2, 3, 64, 64)
    logits, _ = check_contract(model, x, 10)
    with torch.no_grad():
        torch.testing.assert_close(logits, model.model(x))  # the timm model's own forward
    with pytest.raises(ConfigError, match="stage copies"):
        model.make_stage(0, 1)
    with pytest.raises(ConfigError, match="stem/stages"):
        _ = model.stages


def test_timm_resnet18_has_torchvision_size_and_embeds_by_gap():
    model = create_model("timm:resnet18", num_classes=1000).eval()
    assert count(model) == 11_689_512
    with torch.no_grad():
        last = torch.randn(2, 512, 2, 2)
        torch.testing.assert_close(model.embed(last), last.mean(dim=(2, 3)))


def test_timm_out_indices_and_token_models():
    model = create_model("timm:resnet18", num_classes=10, out_indices=[1, 2, 3]).eval()
    assert model.stage_channels == [64, 128, 256] and model.stage_reductions == [4, 8, 16]
    with torch.no_grad():
        logits, feats = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10) and [f.shape[1] for f in feats] == [64, 128, 256]
    with pytest.raises(ConfigError, match="last stage map"):
        model.embed(feats[-1])
    with pytest.raises(ConfigError, match="out_indices"):
        create_model("timm:resnet18", num_classes=10, out_indices=[3, 7])

    vit = create_model("timm:vit_tiny_patch16_224", num_classes=10, img_size=32, depth=2).eval()
    assert vit.stage_channels == [192, 192] and vit.stage_reductions == [16, 16]
    with torch.no_grad():
        logits, feats = vit(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats[-1].shape == (2, 192, 2, 2)
    with pytest.raises(ConfigError, match="token"):
        vit.embed(feats[-1])


def test_timm_errors(monkeypatch):
    with pytest.raises(ConfigError, match="Unknown timm model 'resnet81'.*resnet18"):
        create_model("timm:resnet81", num_classes=10)
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("timm:resnet18", num_classes=10, pretrained=True)
    with pytest.raises(ConfigError, match="does not accept"):
        create_model("timm:resnet18", num_classes=10, no_such_option=1)

    from selfkd.models.timm_backbone import TimmBackbone

    with pytest.raises(ConfigError, match="no feature interface"):
        TimmBackbone(nn.Linear(4, 2), "plain_linear")

    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'selfkd\[timm\]'"):
        create_model("timm:resnet18", num_classes=10)
