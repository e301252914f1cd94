"""DLB: self-distillation from the last mini-batch (:class:`DLB`)."""
from __future__ import annotations

import torch

from ..data.needs import DataNeeds
from ..losses import compute_dtype, cross_entropy, kd_loss, upcast
from ..registry import NonNegative, Positive, Range
from .base import Method, MethodOutput
from .registry import register_method


@register_method("dlb")
class DLB(Method):
    """DLB: Shen, Xu, Yang, Li, Guo, "Self-Distillation from the Last Mini-Batch for Consistency
    Regularization", CVPR 2022.

    Each batch brings two views ``[v⁰; v¹]``; ``v¹`` is trained one step later, distilled from the
    prediction on ``v⁰`` made one update earlier::

        z = f(v⁰_t);  z' = f(x_prev)
        L = CE([z'; z], [y_prev; y_t]) + α·KD_T(z_prev, z')            T = 3, α = ``kd_weight`` = 1
        cache (x_prev, y_prev, z_prev) ← (v¹_t, y_t, sg z)

    with ``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))``. T and α are the paper's (the official
    script has no defaults). The CE averages over all rows of both halves. The cache lives in buffers (so
    checkpoints carry it) and is carried across epoch boundaries: only the very first training step, when the cache
    is still empty, is plain ``CE(z, y_t)`` (its ``kd`` term is 0). Whether the cache exists is read from the
    buffers' shape (empty before the first step), never from a tensor value, so the step needs no host
    sync; it runs one forward on the first step and two afterwards. The cache is copied into storage the
    method owns. Two separate B-image forwards (separate BN batches, as the official code);
    ``joint_forward=True`` runs one 2B forward instead.

    Reference code: it caches the previous logits with their graph, keeping it alive until the next step
    (memory only; the same numbers): here they are detached.
    """

    data_needs = DataNeeds(views=2)
    resizable_buffers = ("prev_images", "prev_targets", "prev_logits")

    search_space = {"temperature": Range(1.0, 8.0), "kd_weight": Range(0.1, 10.0, log=True)}

    def __init__(self, model, num_classes, *, temperature: Positive = 3.0, kd_weight: NonNegative = 1.0,
                 joint_forward: bool = False):
        super().__init__(model, num_classes)
        self.temperature, self.kd_weight, self.joint_forward = temperature, kd_weight, joint_forward
        self.register_buffer("prev_images", torch.zeros(0))
        self.register_buffer("prev_targets", torch.zeros(0, dtype=torch.long))
        self.register_buffer("prev_logits", torch.zeros(0, num_classes))

    def compute_loss(self, images, targets, index=None):
        b = images.shape[0] // 2
        x, y = images[:b], targets[:b]
        if self.prev_targets.shape[0] == 0:  # the very first step: nothing cached yet
            logits, _ = self.backbone(x)
            losses = {"ce": cross_entropy(logits, y), "kd": logits.new_zeros((), dtype=compute_dtype(logits))}
        else:
            # The cache is overwritten below. Targets and logits are only read before that; the images are kept
            # by the first conv for backward, so they go in as a copy (torch.cat makes one anyway).
            prev_y, prev_z = self.prev_targets, self.prev_logits
            if self.joint_forward:
                both, _ = self.backbone(torch.cat([self.prev_images, x]))
                prev_out, logits = both[: len(prev_y)], both[len(prev_y):]
            else:
                logits, _ = self.backbone(x)
                prev_out, _ = self.backbone(self.prev_images.clone())
            losses = {
                "ce": cross_entropy(torch.cat([prev_out, logits]), torch.cat([prev_y, y])),
                "kd": self.kd_weight * kd_loss(prev_z, prev_out, self.temperature),
            }
        self._cache(images[b:], y, upcast(logits.detach()))
        return MethodOutput(logits, losses["ce"] + losses["kd"], losses)

    def _cache(self, images, targets, logits) -> None:
        """Copy into buffers the method owns (a reference to a graph output breaks under CUDA graphs)."""
        for name, value in (("prev_images", images), ("prev_targets", targets), ("prev_logits", logits)):
            if getattr(self, name).shape != value.shape:
                setattr(self, name, torch.empty_like(value))
            getattr(self, name).copy_(value)
