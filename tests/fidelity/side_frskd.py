"""selfkd's side of the FRSKD fixtures (``record_frskd.py``, ``record_frskd_seg.py``).

Classification: the official CIFAR ResNet-18 (``model.*``: ``conv1``, ``bn1``, ``layer1..4`` with ``downsample``,
``fc``) maps onto ``cifar_resnet18`` (the official blocks rectify their input instead of their output, the same
network); its self-teacher (``bifpn.layers.0.*``) onto :class:`~selfkd.methods.parts.bifpn.SelfTeacher`: ``lat_conv`` →
``lateral``, ``lat_conv2`` → ``lateral_bottom_up``, ``up_sample``/``down_sample`` convs → ``up``/``down``
``project``, ``up_conv``/``down_conv`` (two ``Sequential`` s of the depth-2 block) → ``refine_up``/``refine_down``,
``up_weight``/``down_weight`` → the fusions' weights; SLA's ``fc1``/``fc2`` → ``joint_classifier``/``joint_teacher``;
FitNet's regressors ``criterion_kd.linear`` → ``adapters``.
"""
from __future__ import annotations

import contextlib
import re

import torch

from selfkd import create_method, create_model

from .harness import loaded, selfkd_side, train_steps

CLASSIFICATION = [  # (official pattern, selfkd replacement), tried in order
    (r"model\.conv1\.", "backbone.stem.0."), (r"model\.bn1\.", "backbone.stem.1."),
    (r"model\.layer(\d)\.(\d)\.downsample\.", lambda m: f"backbone.stages.{int(m[1]) - 1}.{m[2]}.shortcut."),
    (r"model\.layer(\d)\.", lambda m: f"backbone.stages.{int(m[1]) - 1}."), (r"model\.fc\.", "backbone.fc."),
    (r"bifpn\.layers\.0\.lat_conv\.(\d)\.conv\.0\.", r"teacher.lateral.\1."),
    (r"bifpn\.layers\.0\.lat_conv2\.(\d)\.conv\.0\.", r"teacher.lateral_bottom_up.\1."),
    (r"bifpn\.layers\.0\.(up|down)_sample\.(\d)\.1\.conv\.0\.", r"teacher.\1.\2.project."),
    (r"bifpn\.layers\.0\.(up|down)_conv\.(\d)\.conv\.0\.(\d)", r"teacher.refine_\1.\2.\3"),
    (r"bifpn\.layers\.0\.(up|down)_conv\.(\d)\.conv\.1\.(\d)",
     lambda m: f"teacher.refine_{m[1]}.{m[2]}.{int(m[3]) + 3}"),
    (r"bifpn\.layers\.0\.(up|down)_weight\.(\d)$", r"teacher.fuse_\1.\2.weight"),
    (r"bifpn\.(fc|linear)\.", "teacher.fc."),
    (r"criterion_ce\.fc1\.", "joint_classifier."), (r"criterion_ce\.fc2\.", "joint_teacher."),
    (r"criterion_kd\.linear\.", "adapters."),
]


def rename_classification(name: str) -> str:
    for pattern, replacement in CLASSIFICATION:
        renamed, hits = re.subn(f"^{pattern}", replacement, name)
        if hits:
            return renamed
    raise KeyError(f"no selfkd counterpart known for the official tensor {name}")


@contextlib.contextmanager
def official_draws(step: dict):
    """selfkd's mixing draws made the official ones of ``step`` (``"draws"``): λ₀ (``sample_beta``), the
    permutation (``torch.randperm``) and CutMix's box centres (``torch.randint``, height first). Only the draws are
    replaced; selfkd's mixing and losses run as they are."""
    from unittest import mock

    draws = step.get("draws")
    if draws is None:
        yield
        return
    centres = iter(draws["centres"])
    with mock.patch("selfkd.methods.parts.batch_transforms.sample_beta",
                    lambda alpha, device: torch.tensor(draws["lam"], dtype=torch.float64, device=device)), \
            mock.patch("torch.randperm", lambda n, device=None: torch.tensor(draws["perm"], device=device)), \
            mock.patch("torch.randint", lambda high, size, device=None: torch.tensor(next(centres), device=device)):
        yield


@selfkd_side("frskd.classification")
def classification(fixture) -> list[dict]:
    model = create_model("cifar_resnet18", num_classes=fixture["shapes"]["num_classes"])
    method = create_method("frskd", model, **fixture["selfkd_options"])
    return train_steps(fixture, method, loaded(fixture, method, rename_classification), step_context=official_draws)


# Segmentation: the official EfficientDet (``net.*``) onto ``frskd_seg_effb0`` + the method's self-teacher. The
# encoder slices (``layer0`` = stem conv + BN, ``layer1..5`` = efficientnet_pytorch's blocks 0-1, 2-3, 4-5, 6-11,
# 12-15) map onto torchvision's layout (``features.<stage>.<block>.block.<i>``); ``toplayer``/``latlayer1..3`` are the
# FPN laterals of C5/C4/C3/C2, ``conv6``/``conv7`` its P6/P7, ``BiFPN1``/``BiFPN2`` the segmenter's and the
# teacher's BiFPNSeg layers (``conv<L>up``/``conv<L>dw`` → ``up``/``down`` of level L), ``classifier1``/``2`` the
# heads. Without a counterpart: ``smooth1``/``smooth2`` (built, never used) and the biases of convs that feed a BN
# (the BN removes them: their gradients are zero up to rounding, see ``BN_CANCELLED``).
LAYER_START = {1: 0, 2: 2, 3: 4, 4: 6, 5: 12}  # efficientnet-b0 block index of each official layer's first block
B0_REPEATS = [1, 2, 2, 3, 3, 4, 1]  # blocks per stage
BLOCK = {"_expand_conv": (0, "0"), "_bn0": (0, "1"), "_depthwise_conv": (1, "0"), "_bn1": (1, "1"),
         "_se_reduce": (2, "fc1"), "_se_expand": (2, "fc2"), "_project_conv": (3, "0"), "_bn2": (3, "1")}
BN_CANCELLED = r"(toplayer|latlayer\d|conv[67]|BiFPN\d\.\d\.conv\d(up|dw)|classifier\d)\.0\.bias"
SEGMENTATION = [
    (r"net\.layer0\.", "backbone.encoder.features.0."),
    (r"net\.(toplayer|latlayer1|latlayer2|latlayer3)\.(\d)\.",
     lambda m: f"backbone.fpn.lateral.{['latlayer3', 'latlayer2', 'latlayer1', 'toplayer'].index(m[1])}.{m[2]}."),
    (r"net\.conv([67])\.", r"backbone.fpn.p\1."),
    (r"net\.BiFPN1\.(\d)\.conv(\d)up\.", lambda m: f"backbone.bifpn.{m[1]}.up.{int(m[2]) - 2}."),
    (r"net\.BiFPN1\.(\d)\.conv(\d)dw\.", lambda m: f"backbone.bifpn.{m[1]}.down.{int(m[2]) - 3}."),
    (r"net\.BiFPN2\.(\d)\.conv(\d)up\.", lambda m: f"teacher.{m[1]}.up.{int(m[2]) - 2}."),
    (r"net\.BiFPN2\.(\d)\.conv(\d)dw\.", lambda m: f"teacher.{m[1]}.down.{int(m[2]) - 3}."),
    (r"net\.classifier1\.([01])\.", r"backbone.head.0.\1."), (r"net\.classifier1\.3\.", "backbone.head.1."),
    (r"net\.classifier2\.([01])\.", r"teacher_head.0.\1."), (r"net\.classifier2\.3\.", "teacher_head.1."),
]


def encoder_block(layer: int, index: int, part: str) -> str:
    """``net.layer<layer>.<index>.<part>`` (an efficientnet_pytorch MBConv block) -> torchvision's name."""
    block = LAYER_START[layer] + index
    stage = next(s for s in range(1, 8) if block < sum(B0_REPEATS[:s]))
    module, _, leaf = part.partition(".")
    position, sub = BLOCK[module]
    position -= stage == 1  # the first stage's blocks have no expansion conv
    return f"backbone.encoder.features.{stage}.{block - sum(B0_REPEATS[:stage - 1])}.block.{position}.{sub}.{leaf}"


def rename_segmentation(name: str) -> str | None:
    if re.search(r"smooth\d\.|" + BN_CANCELLED + "$", name):
        return None
    block = re.match(r"net\.layer([1-5])\.(\d+)\.(.+)$", name)
    if block:
        return encoder_block(int(block[1]), int(block[2]), block[3])
    for pattern, replacement in SEGMENTATION:
        renamed, hits = re.subn(f"^{pattern}", replacement, name)
        if hits:
            return renamed
    raise KeyError(f"no selfkd counterpart known for the official tensor {name}")


@selfkd_side("frskd.segmentation", rename_segmentation)
def segmentation(fixture) -> list[dict]:
    model = create_model("frskd_seg_effb0", num_classes=fixture["shapes"]["num_classes"], **fixture["selfkd_options"])
    method = create_method("frskd", model, warmup_epochs=fixture["warmup_epochs"])
    return train_steps(fixture, method, loaded(fixture, method, rename_segmentation, unmatched_ok=("ramp",)))
