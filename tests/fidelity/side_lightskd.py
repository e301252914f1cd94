"""selfkd's side of the LightSKD fixtures (``record_lightskd.py``): ``drg`` and ``lightskd`` on ``cifar_resnet18``.

The official ResNet18 (``conv1``, ``bn1``, ``layer1..4``, ``linear``) and DRG head (``Istr_2``: ``attention2``,
``scala2``, ``fc2``; each ``SepConv`` wraps its layers in ``op``) map one to one onto selfkd's backbone and
:class:`~selfkd.methods.lightskd.ReverseGuidanceHead`.
"""
from __future__ import annotations

import re

from selfkd import create_method, create_model

from .harness import loaded, selfkd_side, train_steps

HEAD = [(r"attention2\.0\.op\.", "attention.0."), (r"attention2\.1\.", "attention.1."),
        (r"scala2\.(\d)\.op\.", r"classifier.\1."), (r"fc2\.", "classifier.4.")]


def rename(name: str) -> str | None:
    """Official name (``net.*``, ``ada_net.*``) -> selfkd method name."""
    part, _, rest = name.partition(".")
    if part == "ada_net":
        for pattern, target in HEAD:
            rest, hits = re.subn(f"^{pattern}", target, rest)
            if hits:
                return "heads.0." + rest
        raise KeyError(name)
    rest = re.sub(r"^conv1\.", "stem.0.", rest)
    rest = re.sub(r"^bn1\.", "stem.1.", rest)
    rest = re.sub(r"^layer(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.", rest)
    return "backbone." + re.sub(r"^linear\.", "fc.", rest)


def run(fixture, method_name: str) -> list[dict]:
    shapes = fixture["shapes"]
    model = create_model("cifar_resnet18", num_classes=shapes["num_classes"])
    method = create_method(method_name, model)
    params = loaded(fixture, method, rename, unmatched_ok=("dsr_prev",))
    return train_steps(fixture, method, params)


@selfkd_side("lightskd.lightskd")
def lightskd(fixture) -> list[dict]:
    return run(fixture, "lightskd")


@selfkd_side("lightskd.drg")
def drg(fixture) -> list[dict]:
    return run(fixture, "drg")
