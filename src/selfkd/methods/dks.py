"""DKS: deeply-supervised knowledge synergy (:class:`DKS`), Self-KD-Lib's ResNet design."""
from __future__ import annotations

from typing import Literal

from torch import nn

from ..errors import ConfigError
from ..losses import cross_entropy, kd_loss
from ..models.base import Backbone
from ..registry import Positive, Range
from .base import Method, MethodOutput
from .parts.branches import StageCopyBranch
from .registry import register_method

TEMPERATURE = {"official": 1.0, "selfkdlib": 4.0}


@register_method("dks")
class DKS(Method):
    """DKS: Sun, Yao, Zhou, Zhao, "Deeply-supervised Knowledge Synergy", CVPR 2019.

    Two stage-copy exits (Self-KD-Lib's ResNet design; the official code only covers WRNs): A from ``F_2``
    (stage-3 copy with 1 block + stage-4 copy with 2 blocks) and B from ``F_3`` (stage-4 copy with 2
    blocks), each + GAP + FC. With exits ``{z, z_A, z_B}``, every exit teaches every other::

        L = Σ_e CE(z_e, y) + Σ_{e ≠ e'} KD_T(z_{e'}, z_e)          (all 6 ordered pairs, weight 1)

    with ``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))``. ``temperature`` defaults to 1, the
    official code's plain softmax, or with ``compat="selfkdlib"`` to 4 (Self-KD-Lib's setting behind its
    78.64 %). Inference uses the backbone exit; the added exits are dropped.

    Reference code: it smooths the probabilities as ``(p + 1e-8)/(1 + K·1e-8)``, a guard against log 0 that
    only changes probabilities near 1e-8 or below; not reproduced (a log-softmax cannot reach log 0). It
    rebuilds the optimizer at each learning-rate decay (resetting the momentum), a property of its training
    script, not of the method.
    """

    search_space = {"temperature": Range(1.0, 8.0)}

    def __init__(self, model: Backbone, num_classes: int, temperature: Positive | None = None,
                 compat: Literal["official", "selfkdlib"] = "official"):
        super().__init__(model, num_classes)
        if len(model.stages) != 4:
            raise ConfigError(f"DKS's exits are defined for four-stage backbones (ResNets); "
                              f"'{getattr(model, 'name', 'this model')}' has {len(model.stages)} stages.")
        self.temperature = TEMPERATURE[compat] if temperature is None else temperature
        self.exits = nn.ModuleList([StageCopyBranch(model, 2, num_classes, blocks=[1, 2]),
                                    StageCopyBranch(model, 3, num_classes, blocks=[2])])

    def compute_loss(self, images, targets, index=None):
        logits, feats = self.backbone(images)
        outputs = [logits, self.exits[0](feats[1])[0], self.exits[1](feats[2])[0]]
        ce = sum(cross_entropy(z, targets) for z in outputs)
        kd = sum(kd_loss(teacher, student, self.temperature)
                 for i, student in enumerate(outputs) for j, teacher in enumerate(outputs) if i != j)
        return MethodOutput(logits, ce + kd, {"ce": ce, "kd": kd})
