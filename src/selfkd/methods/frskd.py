"""FRSKD: "Refine Myself by Teaching Myself: Feature Refinement via Self-Knowledge Distillation"
(Ji, Shin, Hwang, Park, Moon, CVPR 2021); behaviour as in seed-methods.md §2.

A BiFPN self-teacher (:mod:`.bifpn`) refines the classifier's stage features ``F_i`` into ``T_i`` and
classifies ``GAP(ReLU(T_n))``. Loss (§2.2)::

    L = CE(z, y) + CE(t, y) + α·KD_T(t, z) + β·L_feat        α = 2, β = 100, T = 4

Both distillation targets are detached; the teacher's CE reaches the backbone through the
non-detached ``F_i``. Inference and export use the classifier alone.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import attention_map, cross_entropy, kd_loss, mixed_cross_entropy
from ..models.base import Backbone, init_weights
from .batch_transforms import aggregate_rotations, cutmix, mixup, rotate_batch, rotation_targets
from .base import Method, MethodOutput
from .bifpn import TeacherOutput, build_self_teacher
from .registry import register_method

MIX_ALPHA = {"mixup": 0.2, "cutmix": 1.0}  # §2.3: Beta(0.2, 0.2) / Beta(1, 1)


def attention_transfer_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """``L_AT = Σ_i mean over batch and positions of (AT(F_i) − AT(sg(T_i)))²`` (§2.2);
    ``teacher`` holds ``ReLU(T_i)``."""
    return sum((attention_map(s) - attention_map(t.detach())).pow(2).mean() for s, t in zip(student, teacher))


def overhaul_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Heo et al. 2019's margin per channel of a BN whose output feeds a ReLU: the mean of the negative part
    of ``N(β, γ²)``, ``E[x | x < 0] = β − |γ|·φ(β/|γ|)/Φ(−β/|γ|)``, or ``−3|γ|`` where
    ``Φ(−β/|γ|) ≤ 0.001``.

    ``γ``/``β`` are the BN's affine parameters (the mean and spread of its output) read now, so the
    margin follows the teacher during training. Detached, shape ``(1, C, 1, 1)``.
    """
    std, mean = bn.weight.detach().float().abs(), bn.bias.detach().float()
    z = mean / std
    below = torch.special.ndtr(-z)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    margin = torch.where(below > 1e-3, mean - std * density / below, -3 * std)
    return margin.view(1, -1, 1, 1)


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Heo et al.'s partial L2, averaged over elements: target ``max(T, m)``, and no penalty where both the
    source and the target are at or below the margin (the ReLU would discard that difference)."""
    source, target = source.float(), torch.maximum(target.detach().float(), margin)
    keep = (source > target) | (target > 0)
    return ((source - target).pow(2) * keep).mean()


def make_adapters(stage_channels: list[int], widths: list[int], relu: bool) -> nn.ModuleList:
    """Per-level 1×1 conv (no bias) + BN (+ ReLU) from the classifier's ``c_i`` to the teacher's ``d_i``."""
    layers = nn.ModuleList(
        nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.BatchNorm2d(d), *([nn.ReLU(inplace=True)] if relu else []))
        for c, d in zip(stage_channels, widths)
    )
    init_weights(layers)
    return layers


@register_method("frskd")
class FRSKD(Method):
    """FRSKD (§2) with its ablations and combinations as options.

    - ``teacher``: ``bifpnc`` (widths ``width·c_i``, width 2) or ``bifpn`` (``channels`` = 256 at every level).
    - ``feature_loss`` (term named after it, weighted by ``beta``):
      ``at`` — :func:`attention_transfer_loss` on ``ReLU(T_i)``;
      ``fitnet`` — Σ_i MSE(regressor_i(F_i), sg(ReLU(T_i))), regressor = 1×1 conv + BN + ReLU;
      ``overhaul`` — Σ_i partial L2 (:func:`partial_l2`) between connector_i(F_i) (1×1 conv + BN) and the
      pre-ReLU ``T_i`` against :func:`overhaul_margin` of the BN that produced ``T_i``. The classifier side
      uses the backbone's stage outputs ``F_i`` (post-ReLU for post-activation ResNets), since the backbone
      contract exposes no pre-ReLU features. All three are means over elements, summed over levels (the FRSKD
      code reduces overhaul as a per-sample sum with level weights 2^−(n−i), which ties its weight to the
      feature sizes). β = 100 is the paper's value for ``at``; weights for the other two are not known.
    - ``sla`` (§2.3, FRSKD+SLA): the 4 rotations of each image go through the classifier and the teacher in a
      second forward; joint heads ``Linear(c_n, 4K)`` / ``Linear(d_n, 4K)`` on the pooled rotated features are
      trained with CE on ``4y + r`` (term ``ce_joint``). Reading of §2.3's ``KD(z, agg(joint_c))``: it is
      written in the official code's (student, teacher) argument order, as in the concatenation sentence
      after it, so the aggregated joint logits teach the single heads (as in SLA-SD, baselines.md §10):
      ``sla_kd = λ·[KD_T(agg(joint_c), z) + KD_T(agg(joint_t), t)]``, aggregates detached, same ``T``. The
      FRSKD ``kd`` term becomes ``α·KD_T([t; agg(joint_t)], [z; agg(joint_c)])`` (rows concatenated, mean
      over 2B) and the feature loss runs on the plain and the rotated features together.
    - ``mix`` (§2.3): mixup (Beta(0.2, 0.2)) or CutMix (Beta(1, 1)) of the batch, ``mix_alpha`` overrides α;
      ``ce``/``ce_teacher`` become mixed-target CE; KD and the feature loss use the mixed images.
    """

    def __init__(self, model: Backbone, num_classes: int, alpha: float = 2.0, beta: float = 100.0,
                 temperature: float = 4.0, teacher: Literal["bifpnc", "bifpn"] = "bifpnc", width: int | None = None,
                 channels: int | None = None, feature_loss: Literal["at", "fitnet", "overhaul"] = "at",
                 sla: bool = False, sla_weight: float = 1.0, mix: Literal["none", "mixup", "cutmix"] = "none",
                 mix_alpha: float | None = None):
        super().__init__(model, num_classes)
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}. The paper uses temperature=4.")
        for name, weight in (("alpha", alpha), ("beta", beta), ("sla_weight", sla_weight)):
            if weight < 0:
                raise ConfigError(f"{name} must be non-negative, got {weight}. The paper uses alpha=2, beta=100, "
                                  "sla_weight=1.")
        if sla and mix != "none":
            raise ConfigError("FRSKD combines with either SLA (sla=true) or mixing (mix=mixup/cutmix), not both: the "
                              "paper reports them separately and defines no joint loss. Switch one of them off.")
        if mix_alpha is not None and (mix == "none" or mix_alpha <= 0):
            raise ConfigError(f"mix_alpha={mix_alpha} needs mix=mixup or mix=cutmix and a positive value "
                              "(defaults: 0.2 for mixup, 1.0 for cutmix).")
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.feature_loss, self.sla, self.sla_weight, self.mix = feature_loss, sla, sla_weight, mix
        self.mix_alpha = mix_alpha if mix_alpha is not None else MIX_ALPHA.get(mix)
        channels_in = list(model.stage_channels)
        self.teacher = build_self_teacher(teacher, channels_in, list(model.stage_reductions), num_classes,
                                          width=width, channels=channels)
        widths = self.teacher.widths
        self.adapters = None  # fitnet regressors / overhaul connectors
        if feature_loss != "at":
            self.adapters = make_adapters(channels_in, widths, relu=feature_loss == "fitnet")
        if sla:
            self.joint_classifier = nn.Linear(model.embed_dim, 4 * num_classes)
            self.joint_teacher = nn.Linear(widths[-1], 4 * num_classes)

    def feature_distillation(self, feats: list[torch.Tensor], teacher: TeacherOutput) -> torch.Tensor:
        if self.feature_loss == "at":
            return attention_transfer_loss(feats, teacher.features)
        if self.feature_loss == "fitnet":
            return sum(F.mse_loss(adapt(f).float(), t.detach().float())
                       for adapt, f, t in zip(self.adapters, feats, teacher.features))
        margins = [overhaul_margin(bn) for bn in self.teacher.output_bns()]
        return sum(partial_l2(adapt(f), t, m) for adapt, f, t, m in zip(self.adapters, feats, teacher.preact, margins))

    def compute_loss(self, images, targets, index=None):
        if self.mix == "none":
            def ce(logits):
                return cross_entropy(logits, targets)
        else:
            images, perm, lam = (mixup if self.mix == "mixup" else cutmix)(images, self.mix_alpha)

            def ce(logits):
                return mixed_cross_entropy(logits, targets, perm, lam)

        logits, feats = self.backbone(images)
        teacher = self.teacher(feats)
        losses = {"ce": ce(logits), "ce_teacher": ce(teacher.logits)}
        student_logits, teacher_logits = logits, teacher.logits
        if self.sla:
            rot_feats, rot_teacher, joint_c, joint_t = self._rotated_forward(images)
            joint_targets = rotation_targets(targets)
            losses["ce_joint"] = cross_entropy(joint_c, joint_targets) + cross_entropy(joint_t, joint_targets)
            agg_c, agg_t = aggregate_rotations(joint_c), aggregate_rotations(joint_t)
            losses["sla_kd"] = self.sla_weight * (kd_loss(agg_c, logits, self.temperature)
                                                  + kd_loss(agg_t, teacher.logits, self.temperature))
            student_logits, teacher_logits = torch.cat([logits, agg_c]), torch.cat([teacher.logits, agg_t])
            feats = [torch.cat(pair) for pair in zip(feats, rot_feats)]
            teacher = TeacherOutput(teacher_logits,
                                    [torch.cat(pair) for pair in zip(teacher.features, rot_teacher.features)],
                                    [torch.cat(pair) for pair in zip(teacher.preact, rot_teacher.preact)])
        losses["kd"] = self.alpha * kd_loss(teacher_logits, student_logits, self.temperature)
        losses[self.feature_loss] = self.beta * self.feature_distillation(feats, teacher)
        return MethodOutput(logits, sum(losses.values()), losses)

    def _rotated_forward(self, images: torch.Tensor):
        """Second forward of the 4 rotations (§2.3): stage features, teacher output, joint logits of both."""
        rot_feats = self.backbone.features(rotate_batch(images))
        rot_teacher = self.teacher(rot_feats)
        joint_c = self.joint_classifier(self.backbone.embed(rot_feats[-1]))
        joint_t = self.joint_teacher(rot_teacher.features[-1].mean(dim=(2, 3)))
        return rot_feats, rot_teacher, joint_c, joint_t
