"""selfkd's side of the Self-KD-Lib fixtures (``record_selfkdlib.py``).

The official pre-activation ``CIFAR_ResNet18`` (``conv1``, ``bn1``, ``layer1..4``, ``fc``; DKS's and BYOT's exits
``layer3_head2``/``layer4_head2``/``fc_head2`` from stage 2 and ``layer4_head1``/``fc_head1`` from stage 3) maps one
to one onto ``preact_resnet18`` and the methods' stage-copy exits; MixSKD's post-activation network (``backbone``,
``auxiliary_classifier.block_extractor1..3``/``fc1..3``, ``final_aux_classifier``, the discriminators ``gan.<i>``)
onto ``cifar_resnet18``, ``exits``, ``teacher_head`` and ``discriminators``. The official code has two loss
variables (``cls``, ``div``; MixSKD four), each the sum of some of selfkd's terms (:data:`TERMS`).
"""
from __future__ import annotations

import contextlib
import re
from functools import partial

import torch

from selfkd import create_method, create_model
from selfkd.methods.parts import batch_transforms

from .harness import loaded, selfkd_side, train_steps
from .layouts import selfkd_inputs

PREACT = [(r"conv1\.", "backbone.stem.0."), (r"bn1\.", "backbone.stem.1."), (r"fc\.", "backbone.fc."),
          (r"layer(\d)\.", lambda m: f"backbone.stages.{int(m[1]) - 1}."),
          (r"layer3_head2\.", "exits.0.stages.0."), (r"layer4_head2\.", "exits.0.stages.1."),
          (r"fc_head2\.", "exits.0.fc."), (r"layer4_head1\.", "exits.1.stages.0."), (r"fc_head1\.", "exits.1.fc.")]
MIXSKD = [(r"net\.backbone\.conv1\.", "backbone.stem.0."), (r"net\.backbone\.bn1\.", "backbone.stem.1."),
          (r"net\.backbone\.fc\.", "backbone.fc."),
          (r"net\.backbone\.layer(\d)\.", lambda m: f"backbone.stages.{int(m[1]) - 1}."),
          (r"net\.auxiliary_classifier\.block_extractor(\d)\.", lambda m: f"exits.{int(m[1]) - 1}.stages."),
          (r"net\.auxiliary_classifier\.fc(\d)\.", lambda m: f"exits.{int(m[1]) - 1}.fc."),
          (r"net\.final_aux_classifier\.conv\.", "teacher_head.reduce."),
          (r"net\.final_aux_classifier\.fc\.", "teacher_head.fc."),
          (r"gan\.(\d)\.classifier\.", r"discriminators.\1.")]

# official term: the selfkd terms it sums
TERMS = {
    "ce": {"cls": ["ce"], "div": []}, "ls": {"cls": ["ls"], "div": []},
    "tfkd_reg": {"cls": ["ce"], "div": ["reg"]}, "sad": {"cls": ["ce"], "div": ["sad"]},
    "dks": {"cls": ["ce"], "div": ["kd"]}, "byot": {"cls": ["ce"], "div": ["kd", "feature"]},
    "ddgsd": {"cls": ["ce"], "div": ["kd", "mmd"]}, "cskd": {"cls": ["ce"], "div": ["kd"]},
    "bake": {"cls": ["ce"], "div": ["kd"]}, "pskd": {"cls": ["pskd"], "div": []},
    "mixskd": {"cls": ["cls"], "div": ["kd"], "fea": ["feat"], "gan": ["adv"]},
    "mixskd_default": {"cls": ["cls"], "mixcls": ["mix_cls"], "div": ["kd"], "fea": ["feat"],
                       "gan_swapped": ["adv"], "gan": ["disc"]},
}


def renamer(rules):
    def rename(name: str) -> str:
        for pattern, target in rules:
            new, hits = re.subn(f"^{pattern}", target, name)
            if hits:
                return new.replace(".downsample.", ".shortcut.")
        raise KeyError(name)

    return rename


def inputs(fixture, entry, dtype):
    """The batch in selfkd's layout; MixSKD's permutation is the first draw after its seed (λ is pinned)."""
    if "mixup" in fixture:
        torch.manual_seed(fixture["mixup"]["perm_seed"])
    return selfkd_inputs(fixture, entry, dtype)


@contextlib.contextmanager
def pinned_lambda(fixture):
    """MixSKD's λ: the fixture's (a float32 tensor, as selfkd's draw gives)."""
    if "mixup" not in fixture:
        yield
        return
    saved = batch_transforms.sample_beta
    batch_transforms.sample_beta = lambda alpha, device: torch.tensor(fixture["mixup"]["lambda"], device=device)
    try:
        yield
    finally:
        batch_transforms.sample_beta = saved


def run(case: str, fixture) -> list[dict]:
    k = fixture["shapes"]["num_classes"]
    method = create_method(fixture["method"], create_model(fixture["model"], num_classes=k), **fixture["options"],
                           **({"num_samples": fixture["shapes"]["num_samples"]} if fixture["method"] == "pskd" else {}))
    state = [name for name, _ in method.named_buffers() if "." not in name]  # the method's own (PS-KD's table)
    params = loaded(fixture, method, renamer(MIXSKD if case.startswith("mixskd") else PREACT), state)
    with pinned_lambda(fixture):
        steps = train_steps(fixture, method, params, inputs)
    zero = torch.zeros((), dtype=torch.float64)
    for step in steps:
        step["losses"] = {name: float(sum((step["losses"][t] for t in terms), zero))
                          for name, terms in TERMS[case].items()}
    return steps


for _case in TERMS:
    selfkd_side(f"selfkdlib.{_case}", renamer(MIXSKD if _case.startswith("mixskd") else PREACT))(partial(run, _case))
