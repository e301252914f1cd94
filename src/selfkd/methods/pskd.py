"""PS-KD: progressive self-knowledge distillation (:class:`PSKD`)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..comm import all_gather_cat
from ..data.needs import DataNeeds
from ..errors import ConfigError
from ..losses import compute_dtype, soft_cross_entropy, upcast
from ..registry import Fraction, PositiveInt, Range
from .base import Method, MethodOutput
from .registry import register_method

TABLE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@register_method("pskd")
class PSKD(Method):
    """PS-KD: Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of Targets",
    ICCV 2021.

    Each sample is softened by its own prediction from the previous epoch::

        L = SCE(z, (1−α_t)·1_y + α_t·P[idx]),  then  P[idx] ← sg(σ(z))        α_T = 0.8

    with ``SCE(z, q) = −(1/B) Σ_b Σ_k q_bk log σ(z_b)_k`` and ``α_t = α_T·(t+1)/E`` for epoch t (0-based) of E.
    ``P`` (``num_samples`` × K) holds each training sample's train-mode prediction from the previous epoch
    (on that epoch's augmented view, with the weights before that step's update); it is a buffer, so
    checkpoints carry it. Epoch 0 is plain CE (the table's weight is 0). ``table_dtype="float16"`` halves
    the table's memory (targets are still computed in float32). Under DDP every rank gathers
    ``(σ(z), idx)`` from all ranks and writes all rows, so the tables stay identical.

    Reference code: the official code and Self-KD-Lib use ``t+1`` in ``α_t`` (the last epoch has exactly
    α_T), reproduced; the paper writes ``t/E``, which is not an option. In epoch 0 the official code first
    writes ``1_y`` into the rows it reads, the same target as a zero weight. Self-KD-Lib re-reads the table
    from a file each epoch; the checkpoint carries it here (the same numbers).
    """

    data_needs = DataNeeds(index=True)
    shared_buffers = ("table",)  # written from every process's predictions on every process

    search_space = {"alpha_T": Range(0.1, 1.0)}

    def __init__(self, model, num_classes, *, num_samples: PositiveInt, alpha_T: Fraction = 0.8,
                 table_dtype: Literal["float32", "float16", "bfloat16"] = "float32"):
        super().__init__(model, num_classes)
        self.alpha_T = alpha_T
        self.register_buffer("table", torch.zeros(num_samples, num_classes, dtype=TABLE_DTYPES[table_dtype]))
        self.register_buffer("alpha", torch.zeros((), dtype=torch.float64))  # the table's weight in this epoch's target

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.alpha.fill_(0.0 if epoch == 0 else self.alpha_T * (epoch + 1) / num_epochs)

    def compute_loss(self, images, targets, index=None):
        if index is None:
            raise ConfigError("pskd needs the dataset index of every image: call it as method(images, targets, index).")
        logits, _ = self.backbone(images)
        dtype = compute_dtype(logits)
        one_hot = F.one_hot(targets, self.num_classes).to(dtype)
        target = torch.lerp(one_hot, self.table[index].to(dtype), self.alpha.to(dtype))
        loss = soft_cross_entropy(logits, target)
        probs = F.softmax(upcast(logits.detach()), dim=1).to(self.table.dtype)
        self.table.index_copy_(0, all_gather_cat(index), all_gather_cat(probs))
        return MethodOutput(logits, loss, {"pskd": loss})
