"""ONE: on-the-fly native ensemble (:class:`ONE`)."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from ..data.needs import DataNeeds
from ..losses import cross_entropy, kd_loss, rampup_weight
from ..models.base import Backbone
from ..registry import NonNegativeInt, Positive, Range
from .base import Method, MethodOutput
from .parts.branches import StageCopyBranch, check_source_stage
from .registry import register_method


@register_method("one")
class ONE(Method):
    """ONE: Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018.

    Stages up to ``branch_from`` (3) are shared; ``num_branches`` (3) branches follow — branch 1 is the
    backbone's own remaining stages + FC, the others are stage copies (the official CIFAR ResNet-32/110 code
    likewise replicates the last stage). A gate on ``GAP(F_branch_from)`` (Linear → BatchNorm1d → ReLU →
    softmax, not detached) weights the branch logits into the teacher ``z_e = Σ_i g_i·z_i``::

        L = Σ_i CE(z_i, y) + CE(z_e, y) + w(t)·Σ_i KD_T(z_e, z_i)         T = 3
        w(t) = exp(−5·(1 − min(t, R)/R)²)                                 R = ``rampup_epochs`` = 80

    with ``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))`` and ``t`` the 0-based epoch. The ramp is
    the official script's; ``rampup_epochs=0`` (w ≡ 1) is the paper's loss. Inference uses branch 1, i.e.
    exactly the backbone (as the official code reports); ``eval="ensemble"`` predicts with ``z_e``
    ("ONE-E") and then :meth:`eval_model` is the whole method (trunk, all branches and the gate).

    Reference code: its KL adds 1e-7 to the teacher probabilities, a guard against log 0 with no effect
    worth reproducing; not reproduced.
    """

    data_needs = DataNeeds(min_batch=2)  # the gate's BatchNorm1d normalises over the batch

    search_space = {"temperature": Range(1.0, 8.0)}

    def __init__(self, model: Backbone, num_classes: int, temperature: Positive = 3.0,
                 num_branches: Annotated[int, Field(ge=2)] = 3, branch_from: int = 3,
                 rampup_epochs: NonNegativeInt = 80, eval: Literal["backbone", "ensemble"] = "backbone"):
        super().__init__(model, num_classes)
        check_source_stage(model, branch_from, "branch_from")
        self.temperature, self.branch_from, self.rampup_epochs, self.eval_mode = (
            temperature, branch_from, rampup_epochs, eval)
        self.branches = nn.ModuleList(
            StageCopyBranch(model, branch_from, num_classes) for _ in range(num_branches - 1))
        self.gate = nn.Sequential(nn.Linear(model.stage_channels[branch_from - 1], num_branches),
                                  nn.BatchNorm1d(num_branches), nn.ReLU(inplace=True), nn.Softmax(dim=1))
        self.register_buffer("kd_weight", torch.tensor(rampup_weight(0, rampup_epochs)))

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.kd_weight.fill_(rampup_weight(epoch, self.rampup_epochs))

    def branch_logits(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``([z_1..z_m], z_e)``: branch logits (z_1 = the backbone's) and the gated ensemble."""
        z1, feats = self.backbone(images)
        shared = feats[self.branch_from - 1]
        logits = [z1] + [branch(shared)[0] for branch in self.branches]
        gate = self.gate(shared.mean(dim=(2, 3)))
        ensemble = (gate.unsqueeze(2) * torch.stack(logits, dim=1)).sum(dim=1)
        return logits, ensemble

    def compute_loss(self, images, targets, index=None):
        logits, ensemble = self.branch_logits(images)
        ce = sum(cross_entropy(z, targets) for z in logits)
        kd = sum(kd_loss(ensemble, z, self.temperature) for z in logits)
        losses = {"ce": ce, "ce_ensemble": cross_entropy(ensemble, targets), "kd": self.kd_weight * kd}
        return MethodOutput(logits[0], sum(losses.values()), losses)

    def predict(self, images):
        if self.eval_mode == "ensemble":
            return self.branch_logits(images)[1]
        return self.backbone(images)[0]

    def eval_model(self) -> nn.Module:
        return self if self.eval_mode == "ensemble" else self.backbone
