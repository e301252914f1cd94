"""MixSKD: self-knowledge distillation from mixup (:class:`MixSKD`)."""
from __future__ import annotations

from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data.needs import DataNeeds
from ..errors import ConfigError
from ..losses import cross_entropy, kd_loss, mixed_cross_entropy, upcast
from ..models.base import Backbone
from ..registry import Positive, Range
from .base import Method, MethodOutput
from .parts.batch_transforms import mixup
from .parts.branches import StageCopyBranch
from .registry import register_method


class SelfTeacherHead(nn.Module):
    """Concat of the exits' final maps (n·c channels) → conv 1×1 to c (no bias, no BN/ReLU) → GAP → FC."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.fc(self.reduce(maps).mean(dim=(2, 3)))


def discriminator(channels: int, hidden: int = 128) -> nn.Sequential:
    """``D_e``: (GAP'd feature) → Linear(c→128) → ReLU → Linear(128→2)."""
    return nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))


MIXED, INTERPOLATED = 0, 1  # D's class of mix(G_e) ([1, 0]) and of G_e(x̃) ([0, 1])


def discriminator_bce(d, mixed: torch.Tensor, interpolated: torch.Tensor, swapped: bool = False) -> torch.Tensor:
    """BCE-with-logits of ``d`` (a callable) on the 2B rows ``[mix(G); G(x̃)]`` against the one-hots of their
    classes (``swapped``: of the other class): one mean over all 2B×2 outputs, as the official
    ``discriminatorLoss`` (Self-KD-Lib ``methods/adversarial.py``)."""
    logits = upcast(d(torch.cat([mixed, interpolated])))
    b, (first, second) = mixed.shape[0], (INTERPOLATED, MIXED) if swapped else (MIXED, INTERPOLATED)
    target = torch.zeros_like(logits)
    target[:b, first] = 1.0
    target[b:, second] = 1.0
    return F.binary_cross_entropy_with_logits(logits, target)


@register_method("mixskd")
class MixSKD(Method):
    """MixSKD: Yang, An, Zhou, Cai, Zhi, Wu, Xu, Zhang, "MixSKD: Self-Knowledge Distillation from Mixup for
    Image Recognition", ECCV 2022. The authors' code is in Self-KD-Lib (``main_mixskd_cifar.py``,
    ``main_mixskd_imagenet.py``).

    Exits 1..n−1 are stage-copy branches from ``F_1..F_{n−1}`` (backbone block counts), exit n is the
    backbone; ``G_e`` are their final maps. Each step mixes ``x̃ = λx + (1−λ)x_π`` (λ ~ Beta(α, α), one
    per batch, α = 0.4) and runs ONE forward on ``[x; x̃]``; ``mix(u) = λu(x) + (1−λ)u(x_π)``. A self-teacher
    head reads the concatenated maps: ``t̂ = head(mix(G))``, ``t̃ = head(G(x̃))``. With
    ``mixCE(v) = λ·CE(v, y) + (1−λ)·CE(v, y_π)``, ``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))``
    and T = 3::

        L_cls  = Σ_e CE(z_e(x), y)
        L_mcls = Σ_e mixCE(z_e(x̃)) + mixCE(t̂) + mixCE(t̃)
        L_kd   = KD_T(t̃, mix(z_n)) + KD_T(t̂, z_n(x̃))
                 + Σ_{e<n} [KD_T(z_e(x̃), mix(z_e)) + KD_T(mix(z_e), z_e(x̃))]
        L_fea  = Σ_e MSE(mix(G_e), G_e(x̃))
        L_adv  = Σ_e BCE(D̄_e([mix G_e; G_e(x̃)]), [[0,1]; [1,0]])         (D̄: D with detached weights)
        L_disc = Σ_e BCE(D_e(sg [mix G_e; G_e(x̃)]), [[1,0]; [0,1]])

    ``D_e`` is a discriminator (GAP → Linear(c→128) → ReLU → Linear(128→2)) on the exits' final maps; each BCE
    is one mean over its 2B rows and both outputs, as the official ``discriminatorLoss``. One backward trains
    the network (on everything but ``L_disc``) and the discriminators (on ``L_disc`` only). Inference uses the
    backbone exit alone.

    Reference code: its CIFAR script computes ``L_mcls`` but leaves it out of the total, so the self-teacher
    head gets no gradient and stays at its random init (its ImageNet script adds ``L_mcls``, as the default
    here); its discriminators sit in a plain list, so they are never trained, and the network minimises the
    unswapped BCE. The default fixes all three; ``compat="selfkdlib"`` reproduces them. Not reproduced: its
    backbone's stem lacks the ReLU (a backbone property; no selfkd model has that stem), and its test reports the
    best of the four exits (selecting on the test set).
    """

    data_needs = DataNeeds(min_batch=2)  # mixes each image with another of the batch

    search_space = {"temperature": Range(1.0, 8.0), "alpha": Range(0.1, 1.0)}

    def __init__(self, model: Backbone, num_classes: int, temperature: Positive = 3.0, alpha: Positive = 0.4,
                 compat: Literal["official", "selfkdlib"] = "official"):
        super().__init__(model, num_classes)
        if len(model.stages) < 2:
            raise ConfigError("MixSKD's exits branch off intermediate stages, so it needs a backbone with at "
                              f"least two stages; '{getattr(model, 'name', 'this model')}' has {len(model.stages)}.")
        self.temperature, self.alpha, self.compat = temperature, alpha, compat
        n, channels = len(model.stages), model.stage_channels[-1]
        self.exits = nn.ModuleList(StageCopyBranch(model, source, num_classes) for source in range(1, n))
        self.teacher_head = SelfTeacherHead(n * channels, channels, num_classes)
        self.discriminators = nn.ModuleList(discriminator(channels) for _ in range(n))
        if compat == "selfkdlib":
            self.teacher_head.requires_grad_(False)
            self.discriminators.requires_grad_(False)

    def compute_loss(self, images, targets, index=None):
        b = images.shape[0]
        mixed, perm, lam = mixup(images, self.alpha)
        z_n, feats = self.backbone(torch.cat([images, mixed]))
        outputs = [branch(feats[i]) for i, branch in enumerate(self.exits)] + [(z_n, feats[-1])]

        def mix(u: torch.Tensor) -> torch.Tensor:  # on the rows of the originals
            return lam * u[:b] + (1 - lam) * u[:b][perm]

        logits = [z for z, _ in outputs]
        maps = [upcast(g) for _, g in outputs]
        mixed_maps = [mix(g) for g in maps]
        teachers = self.teacher_head(torch.cat([torch.cat(mixed_maps, 1), torch.cat([g[b:] for g in maps], 1)]))
        t_hat, t_tilde = teachers[:b], teachers[b:]

        losses = {"cls": sum(cross_entropy(z[:b], targets) for z in logits)}
        if self.compat == "official":
            losses["mix_cls"] = sum(mixed_cross_entropy(v, targets, perm, lam)
                                    for v in [z[b:] for z in logits] + [t_hat, t_tilde])
        kd = kd_loss(t_tilde, mix(z_n), self.temperature) + kd_loss(t_hat, z_n[b:], self.temperature)
        for z in logits[:-1]:
            kd = kd + kd_loss(z[b:], mix(z), self.temperature) + kd_loss(mix(z), z[b:], self.temperature)
        losses["kd"] = kd
        losses["feat"] = sum(F.mse_loss(m, g[b:]) for m, g in zip(mixed_maps, maps))
        losses.update(self.adversarial_losses(mixed_maps, [g[b:] for g in maps]))
        return MethodOutput(z_n[:b], sum(losses.values()), losses)

    def adversarial_losses(self, mixed_maps: list[torch.Tensor], interpolated_maps: list[torch.Tensor]) -> dict:
        adv, disc = 0.0, 0.0
        for d, m, g in zip(self.discriminators, mixed_maps, interpolated_maps):
            m, g = m.mean(dim=(2, 3)), g.mean(dim=(2, 3))
            if self.compat == "selfkdlib":  # frozen D, unswapped labels
                adv = adv + discriminator_bce(d, m, g)
                continue
            frozen = {name: p.detach() for name, p in d.named_parameters()}
            adv = adv + discriminator_bce(partial(functional_call, d, frozen), m, g, swapped=True)
            disc = disc + discriminator_bce(d, m.detach(), g.detach())
        return {"adv": adv} if self.compat == "selfkdlib" else {"adv": adv, "disc": disc}
