"""PS-KD: progressive self-knowledge distillation (baselines.md §6).

Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of Targets", ICCV 2021.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..comm import all_gather_cat
from ..errors import ConfigError
from ..losses import soft_cross_entropy
from .base import DataNeeds, Method, MethodOutput
from .registry import register_method

TABLE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@register_method("pskd")
class PSKD(Method):
    """``SCE(z, (1−α_t)·1_y + α_t·P[idx])``, then ``P[idx] ← sg(σ(z))``.

    ``P`` (``num_samples`` × K) holds each training sample's train-mode prediction from the previous epoch
    (on that epoch's augmented view, with the weights before that step's update); it is a buffer, so
    checkpoints carry it (Self-KD-Lib re-reads it from a file each epoch). ``α_t = α_T·(t+1)/E`` for
    epoch t of E (official and Self-KD-Lib use t+1; the paper writes t/E), α_T = 0.8. In epoch 0 the
    official code first writes ``1_y`` into the rows it reads, so the target is exactly ``1_y``: here the
    table's weight is 0 in epoch 0, which is the same. ``table_dtype="float16"`` halves the table's
    memory (targets are still computed in float32). Under DDP every rank gathers ``(σ(z), idx)`` from all
    ranks and writes all rows, so the tables stay identical.
    """

    data_needs = DataNeeds(index=True)

    def __init__(self, model, num_classes, *, num_samples: int, alpha_T: float = 0.8,
                 table_dtype: Literal["float32", "float16", "bfloat16"] = "float32"):
        super().__init__(model, num_classes)
        if num_samples <= 0 or not 0 <= alpha_T <= 1:
            raise ConfigError(f"pskd needs num_samples > 0 (the training-set size) and 0 <= alpha_T <= 1, got "
                              f"num_samples={num_samples}, alpha_T={alpha_T}. The paper uses alpha_T=0.8.")
        self.alpha_T = alpha_T
        self.register_buffer("table", torch.zeros(num_samples, num_classes, dtype=TABLE_DTYPES[table_dtype]))
        self.register_buffer("alpha", torch.zeros(()))  # weight of the table in this epoch's target

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.alpha.fill_(0.0 if epoch == 0 else self.alpha_T * (epoch + 1) / num_epochs)

    def compute_loss(self, images, targets, index=None):
        if index is None:
            raise ConfigError("pskd needs the dataset index of every image: call it as method(images, targets, index).")
        logits, _ = self.backbone(images)
        one_hot = F.one_hot(targets, self.num_classes).float()
        target = torch.lerp(one_hot, self.table[index].float(), self.alpha)
        loss = soft_cross_entropy(logits, target)
        probs = F.softmax(logits.detach().float(), dim=1).to(self.table.dtype)
        self.table.index_copy_(0, all_gather_cat(index), all_gather_cat(probs))
        return MethodOutput(logits, loss, {"pskd": loss})
