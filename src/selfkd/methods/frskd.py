"""FRSKD: a BiFPN self-teacher refines the classifier's stage features and teaches it (:class:`FRSKD`)."""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import attention_transfer_loss, cross_entropy, kd_loss, mixed_cross_entropy, upcast
from ..models.base import Backbone, init_weights
from ..registry import NonNegative, Positive, PositiveInt, Range
from .base import Method, MethodOutput
from .parts.batch_transforms import aggregate_rotations, cutmix, mixup, rotate_batch, rotation_targets
from .parts.bifpn import TeacherOutput, build_self_teacher
from .registry import register_method

MIX_ALPHA = {"mixup": 0.2, "cutmix": 1.0}  # the paper's Beta(0.2, 0.2) / Beta(1, 1)


def overhaul_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Heo et al. 2019's margin per channel of a BN whose output feeds a ReLU: the mean of the negative part
    of ``N(β, γ²)``, ``E[x | x < 0] = β − |γ|·φ(β/|γ|)/Φ(−β/|γ|)``, or ``−3|γ|`` where
    ``Φ(−β/|γ|) ≤ 0.001``.

    ``γ``/``β`` are the BN's affine parameters (the mean and spread of its output) read now, so the
    margin follows the teacher during training. Detached, shape ``(1, C, 1, 1)``.
    """
    std, mean = upcast(bn.weight.detach()).abs(), upcast(bn.bias.detach())
    z = mean / std
    below = torch.special.ndtr(-z)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    margin = torch.where(below > 1e-3, mean - std * density / below, -3 * std)
    return margin.view(1, -1, 1, 1)


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Heo et al.'s partial L2, averaged over elements: target ``max(T, m)``, and no penalty where both the
    source and the target are at or below the margin (the ReLU would discard that difference)."""
    source, target = upcast(source), torch.maximum(upcast(target.detach()), margin)
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
    """FRSKD: Ji, Shin, Hwang, Park, Moon, "Refine Myself by Teaching Myself: Feature Refinement via
    Self-Knowledge Distillation", CVPR 2021.

    A BiFPN self-teacher (:class:`~selfkd.methods.parts.bifpn.SelfTeacher`) refines the classifier's stage features
    ``F_i`` into ``T_i`` and classifies ``t = fc(GAP(ReLU(T_n)))``; it teaches the classifier with soft labels
    and attention maps::

        L = CE(z, y) + CE(t, y) + α·KD_T(t, z) + β·L_AT        α = 2, β = 100, T = 4, teacher "bifpnc", width 2

    with ``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))`` and :func:`attention_transfer_loss`. Both
    distillation targets are detached; the teacher's CE also trains the backbone through the undetached
    ``F_i``. Inference and export use the classifier alone. Options (the paper's ablations and combinations):

    - ``teacher``: ``bifpnc`` (widths ``width·c_i``, width 2) or ``bifpn`` (``channels`` = 256 at every level).
    - ``feature_loss`` (term named after it, weighted by ``beta``):
      ``at`` — :func:`attention_transfer_loss` on ``ReLU(T_i)``;
      ``fitnet`` — Σ_i MSE(regressor_i(F_i), sg(ReLU(T_i))), regressor = 1×1 conv + BN + ReLU;
      ``overhaul`` — Σ_i partial L2 (:func:`partial_l2`) between connector_i(F_i) (1×1 conv + BN) and the
      pre-ReLU ``T_i`` against :func:`overhaul_margin` of the BN that produced ``T_i``. The classifier side
      uses the backbone's stage outputs ``F_i`` (post-ReLU for post-activation ResNets), since the backbone
      contract exposes no pre-ReLU features. All three are means over elements, summed over levels.
      β = 100 is the paper's value for ``at``; weights for the other two are not known.
    - ``sla`` (FRSKD+SLA): the 4 rotations of each image go through the classifier and the teacher in a
      second forward; joint heads ``Linear(c_n, 4K)`` / ``Linear(d_n, 4K)`` on the pooled rotated features are
      trained with CE on ``4y + r`` (term ``ce_joint``). The aggregated joint logits (each rotation's own slot,
      averaged over the rotations, detached) teach the single heads, as in SLA-SD (the official code's KD
      takes the student first, so its ``KD(z, agg(joint_c))`` is this direction):
      ``sla_kd = λ·[KD_T(agg(joint_c), z) + KD_T(agg(joint_t), t)]``, λ = ``sla_weight`` = 1, same ``T``. The
      ``kd`` term becomes ``α·KD_T([t; agg(joint_t)], [z; agg(joint_c)])`` (rows concatenated, mean over 2B)
      and the feature loss runs on the plain and the rotated features together.
    - ``mix``: mixup (Beta(0.2, 0.2)) or CutMix (Beta(1, 1)) of the batch, ``mix_alpha`` overrides α;
      ``ce``/``ce_teacher`` become mixed-target CE; KD and the feature loss use the mixed images.

    Reference code: its overhaul margin was computed once at construction, from the untrained teacher (so a
    constant −√(2/π) ≈ −0.80 for every channel); here it follows the teacher's BNs (:func:`overhaul_margin`).
    It reduced overhaul as a per-sample sum with level weights 2^−(n−i), which ties the term's weight to the
    feature sizes; here every feature loss is a mean. Neither is an option (they only concern the
    ``overhaul`` ablation, whose weight is unknown anyway).

    ``tests/test_fidelity_frskd.py`` compares the default, ``teacher="bifpn"``, ``feature_loss="fitnet"`` and ``sla``
    with the official code (every loss term and gradient, float64, to 1e-10; README "Fidelity").
    """

    search_space = {"alpha": Range(0.2, 20.0, log=True), "beta": Range(10.0, 1000.0, log=True),
                    "temperature": Range(1.0, 8.0)}

    def __init__(self, model: Backbone, num_classes: int, alpha: NonNegative = 2.0, beta: NonNegative = 100.0,
                 temperature: Positive = 4.0, teacher: Literal["bifpnc", "bifpn"] = "bifpnc",
                 width: PositiveInt | None = None, channels: PositiveInt | None = None,
                 feature_loss: Literal["at", "fitnet", "overhaul"] = "at", sla: bool = False,
                 sla_weight: NonNegative = 1.0, mix: Literal["none", "mixup", "cutmix"] = "none",
                 mix_alpha: Positive | None = None):
        super().__init__(model, num_classes)
        if sla and mix != "none":
            raise ConfigError("FRSKD combines with either SLA (sla=true) or mixing (mix=mixup/cutmix), not both: the "
                              "paper reports them separately and defines no joint loss. Switch one of them off.")
        if mix_alpha is not None and mix == "none":
            raise ConfigError(f"mix_alpha={mix_alpha} is the Beta(α, α) of mixing, so it needs mix=mixup or mix=cutmix "
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
            return sum(F.mse_loss(upcast(adapt(f)), upcast(t.detach()))
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
        """Second forward of the 4 rotations (``sla``): stage features, teacher output, joint logits of both."""
        rot_feats = self.backbone.features(rotate_batch(images))
        rot_teacher = self.teacher(rot_feats)
        joint_c = self.joint_classifier(self.backbone.embed(rot_feats[-1]))
        joint_t = self.joint_teacher(rot_teacher.features[-1].mean(dim=(2, 3)))
        return rot_feats, rot_teacher, joint_c, joint_t
