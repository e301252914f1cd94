"""selfkd's side of the FRSKD fixtures (``record_frskd.py``, ``record_frskd_seg.py``).

Classification: the official CIFAR ResNet-18 (``model.*``: ``conv1``, ``bn1``, ``layer1..4`` with ``downsample``,
``fc``) maps onto ``cifar_resnet18`` (the official blocks rectify their input instead of their output, the same
network); its self-teacher (``bifpn.layers.0.*``) onto :class:`~selfkd.methods.bifpn.SelfTeacher`: ``lat_conv`` →
``lateral``, ``lat_conv2`` → ``lateral_bottom_up``, ``up_sample``/``down_sample`` convs → ``up``/``down``
``project``, ``up_conv``/``down_conv`` (two ``Sequential`` s of the depth-2 block) → ``refine_up``/``refine_down``,
``up_weight``/``down_weight`` → the fusions' weights; SLA's ``fc1``/``fc2`` → ``joint_classifier``/``joint_teacher``;
FitNet's regressors ``criterion_kd.linear`` → ``adapters``.
"""
from __future__ import annotations

import re

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
    (r"bifpn\.layers\.0\.(up|down)_conv\.(\d)\.conv\.1\.(\d)", lambda m: f"teacher.refine_{m[1]}.{m[2]}.{int(m[3]) + 3}"),
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


@selfkd_side("frskd.classification")
def classification(fixture) -> list[dict]:
    model = create_model("cifar_resnet18", num_classes=fixture["shapes"]["num_classes"])
    method = create_method("frskd", model, **fixture["selfkd_options"])
    return train_steps(fixture, method, loaded(fixture, method, rename_classification))
