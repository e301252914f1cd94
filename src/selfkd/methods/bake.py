"""BAKE: batch knowledge ensembling (:class:`BAKE`)."""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .. import comm
from ..data.needs import DataNeeds
from ..losses import cross_entropy, kd_loss, kd_prob_loss, upcast
from ..models.base import Backbone
from ..registry import NonNegative, Positive, PositiveInt, Range
from .base import Method, MethodOutput
from .registry import register_method


def ensemble_targets(embeddings: torch.Tensor, logits: torch.Tensor, temperature: float, omega: float) -> torch.Tensor:
    """Batch knowledge ensemble ``Q = (1−ω)·(I − ω·A)⁻¹·P`` (rows sum to 1), in float32 without gradient.

    ``A = softmax_row(ĥĥᵀ − 10⁹·I)`` over the raw cosine similarities of the L2-normalised embeddings
    (self excluded), ``P = σ(z/T)``. ``A`` is row-stochastic, so ``(I − ωA)⁻¹ = Σ_k (ωA)^k`` converges
    with ``‖(ωA)^k‖_∞ = ω^k``; summing it by repeated squaring, ``X ← X + M·X, M ← M·M`` (after ``n``
    rounds ``X = Σ_{k<2^n} (ωA)^k P``), stops when the tail is below float32 resolution (float64's for float64
    inputs). This is a few small matmuls with no host sync, unlike a linear solve (which checks for singularity
    on the host and cannot be captured in a CUDA graph).
    """
    with torch.no_grad(), torch.autocast(embeddings.device.type, enabled=False):
        h = F.normalize(upcast(embeddings.detach()), dim=1)
        eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
        power = omega * F.softmax(h @ h.T - 1e9 * eye, dim=1)
        q = F.softmax(upcast(logits.detach()) / temperature, dim=1)
        for _ in range(doubling_rounds(omega, 1e-17 if h.dtype == torch.float64 else 1e-8)):
            q = q + power @ q
            power = power @ power
        return (1 - omega) * q


def doubling_rounds(omega: float, tolerance: float = 1e-8) -> int:
    """Rounds ``n`` with ``ω^(2^n) ≤ tolerance`` (5 for ω = 0.5)."""
    if omega <= 0:
        return 0
    return max(0, math.ceil(math.log2(math.log(tolerance) / math.log(omega))))


@register_method("bake")
class BAKE(Method):
    """BAKE: Ge, Choi, Zhang, Zhao, Zhu, Zhao, Li, "Self-distillation with Batch Knowledge Ensembling
    Improves ImageNet Classification", arXiv:2104.13298, 2021.

    Each sample's teacher is an ensemble of the predictions of the similar samples in its batch::

        A = softmax_row(ĥĥᵀ − 10⁹·I)      ĥ = h/‖h‖₂ (cosine similarities, self excluded)
        Q = (1−ω)·(I − ω·A)⁻¹·σ(z/T)       (no gradient; rows sum to 1)
        L = CE(z, y) + λ·KDp_T(Q, z)       T = 4, ω = 0.5, λ = ``weight`` = 1

    ``KDp_T(q, s) = T²·(1/B) Σ_b KL(q_b ‖ σ(s_b/T))``: Q is the target distribution itself. Batches hold
    ``batch_size`` images in total: anchors, each followed by ``partners`` = 3 other images of its class
    (drawn without replacement); every image is a training sample for both terms. Under DDP
    ``global_ke=True`` (the official code) all-gathers ĥ and the logits, ensembles over the global batch and
    keeps this rank's rows; ``global_ke=False`` ensembles each rank's batch alone.

    The default is the official code. ``compat="selfkdlib"`` reproduces Self-KD-Lib's two bugs: it applies
    ``σ(·/T)`` to Q again (a near-uniform target) and draws ``batch_size`` anchors plus 3 partners each
    (batches of 4× the size).
    """

    search_space = {"temperature": Range(1.0, 8.0), "omega": Range(0.1, 0.9), "weight": Range(0.1, 10.0, log=True)}

    def __init__(self, model: Backbone, num_classes: int, temperature: Positive = 4.0,
                 omega: Annotated[float, Field(ge=0, lt=1)] = 0.5, weight: NonNegative = 1.0,
                 partners: PositiveInt = 3, global_ke: bool = True,
                 compat: Literal["official", "selfkdlib"] = "official"):
        super().__init__(model, num_classes)
        self.temperature, self.omega, self.weight, self.global_ke, self.compat = (
            temperature, omega, weight, global_ke, compat)
        self.data_needs = DataNeeds(class_partners=partners, partners_in_batch=compat == "official",
                                    partners_replace=False, exclude_self=True)

    def _gathered(self, h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(ĥ-source embeddings, logits, offset of this rank's rows) over the global batch when asked."""
        if not (self.global_ke and comm.is_distributed()):
            return h, z, 0
        sizes = comm.all_gather_cat(torch.tensor([h.shape[0]], device=h.device))
        offset = int(sizes[: comm.rank()].sum())
        return comm.all_gather_cat(upcast(h.detach())), comm.all_gather_cat(upcast(z.detach())), offset

    def compute_loss(self, images, targets, index=None):
        logits, feats = self.backbone(images)
        h, z, offset = self._gathered(self.backbone.embed(feats[-1]), logits)
        q = ensemble_targets(h, z, self.temperature, self.omega)[offset: offset + logits.shape[0]]
        if self.compat == "selfkdlib":
            kd = kd_loss(q, logits, self.temperature)  # SKL: softmax(Q/T) as the target
        else:
            kd = kd_prob_loss(q, logits, self.temperature)
        losses = {"ce": cross_entropy(logits, targets), "kd": self.weight * kd}
        return MethodOutput(logits, sum(losses.values()), losses)
