"""selfkd's side of the fixtures recorded from the methods' authors' repositories (``record_<reference>.py``).

Official networks map one to one onto selfkd's: the pre-activation ``CIFAR_ResNet18`` of CS-KD, BAKE, PS-KD and
Zipf's LS (``conv1``, ``bn1``, ``layer1..4``, ``linear``) onto ``preact_resnet18``; TF-KD's post-activation
``ResNet18`` onto ``cifar_resnet18``; the three-stage CIFAR ResNets of DLB and ONE (16/32/64 channels) onto
:class:`~selfkd.models.cifar_resnet.CifarResNet` with three stages of width 16 (no registered model has that
shape), ONE's copies of the last stage and its gate onto the method's ``branches`` and ``gate``.
"""
from __future__ import annotations

import re
import tempfile

from selfkd import create_method, create_model
from selfkd.methods import method_class
from selfkd.models.cifar_resnet import BasicBlock, CifarResNet

from .harness import loaded, selfkd_side, train_steps
from .layouts import selfkd_inputs

BACKBONE = [(r"conv1\.", "backbone.stem.0."), (r"bn1\.", "backbone.stem.1."), (r"(linear|fc)\.", "backbone.fc."),
            (r"layer(\d)\.", lambda m: f"backbone.stages.{int(m[1]) - 1}.")]
RULES = {
    "cskd": BACKBONE, "pskd": BACKBONE, "bake": BACKBONE, "dlb": BACKBONE,
    "zipf_ls": [(r"linear[23]\.", None)] + BACKBONE,  # heads in no loss: not created
    "tfkd_reg": BACKBONE,
    "tfkd_self": BACKBONE,
    "sla_sd": [(r"base_model\.0\.", "backbone.stem.0."), (r"base_model\.1\.", "backbone.stem.1."),
               (r"base_model\.([4-7])\.", lambda m: f"backbone.stages.{int(m[1]) - 4}."),
               (r"classifiers\.0\.", "joint."), (r"classifiers\.1\.", "backbone.fc.")],
    "uskd": [(r"(teacher|data_preprocessor)\.", None), (r"distill_losses\.loss_uskd\.fc\.", "weak_head."),
             (r"student\.head\.fc\.", "backbone.fc.")] + BACKBONE,
    "one": [(r"layer3_1\.", "backbone.stages.2."), (r"classfier3_1\.", "backbone.fc."),
            (r"layer3_([23])\.", lambda m: f"branches.{int(m[1]) - 2}.stages.0."),
            (r"classfier3_([23])\.", lambda m: f"branches.{int(m[1]) - 2}.fc."),
            (r"control_v1\.", "gate.0."), (r"bn_v1\.", "gate.1.")] + BACKBONE,
}


# official term: the selfkd terms it sums, where they differ
TERMS = {"one": {"ce": ["ce", "ce_ensemble"], "kd": ["kd"]}}


def rename(rules, torchvision: bool = False):
    """Official name -> selfkd name (None: no counterpart): the first rule matching its start; ``downsample`` is
    selfkd's ``shortcut`` (but in torchvision's ResNets, which selfkd wraps as they are);
    TF-KD-self's ``teacher_model.*`` is the method's frozen ``teacher`` (a backbone: no ``backbone.`` prefix)."""
    def apply(name: str) -> str:
        teacher = name.startswith("teacher_model.")
        name = re.sub(r"^(teacher_model\.|model\.|student\.backbone\.)", "", name)  # the networks' own names
        for pattern, target in rules:
            if target is None:
                if re.match(pattern, name):
                    return None
                continue
            new, hits = re.subn(f"^{pattern}", target, name)
            if hits:
                new = new if torchvision else new.replace(".downsample.", ".shortcut.")
                return "teacher." + new.removeprefix("backbone.") if teacher else new
        raise KeyError(name)

    return apply


def model(fixture):
    """The fixture's selfkd backbone: a registered model, or ``CifarResNet`` of width 16 with ``blocks``."""
    k, spec = fixture["shapes"]["num_classes"], fixture["model"]
    if isinstance(spec, dict):
        return CifarResNet(BasicBlock, spec["blocks"], k, width=spec["width"], name="cifar_resnet_3stage")
    return create_model(spec, num_classes=k)


def run(name: str, fixture) -> list[dict]:
    backbone, options = model(fixture), dict(fixture["options"])
    with tempfile.TemporaryDirectory() as folder:
        if fixture["method"] == "tfkd_self":  # a teacher file to build from; the fixture's weights replace it
            options.update(method_class("tfkd_self").example_options(backbone, folder))
        if fixture["method"] == "pskd":
            options["num_samples"] = fixture["shapes"]["num_samples"]
        method = create_method(fixture["method"], backbone, **options)
    state = [n for n, _ in method.named_buffers() if "." not in n]  # the method's own (tables, caches, ramps)
    params = loaded(fixture, method, rename(RULES[name], name == "sla_sd"), state)
    steps = train_steps(fixture, method, params, selfkd_inputs)
    for step in steps:
        for term, parts in TERMS.get(name, {}).items():
            step["losses"][term] = sum(step["losses"].pop(p) for p in parts if p != term) + step["losses"].get(term, 0)
    return steps


for _name in RULES:
    selfkd_side(f"authors.{_name}", rename(RULES[_name], _name == "sla_sd"))(lambda fixture, _n=_name: run(_n, fixture))
