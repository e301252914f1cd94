"""The method contract.

A method is an ``nn.Module`` that holds the backbone and whatever it adds (heads, self-teacher,
per-sample tables). In training mode ``method(images, targets, index=None)`` returns a
:class:`MethodOutput`; in eval mode ``method(images)`` returns the logits used for inference.
The engine only sums nothing, logs ``losses`` and back-propagates ``loss``.

Batch layout: the data pipeline gathers a batch from a vector of sample indices that the method's
:class:`DataNeeds` shapes — several views are concatenated view-major (``[x¹; x²]``), same-class
partners follow their anchors block-wise (``[anchors; partners]``), and ``targets``/``index`` have one
entry per image. ``MethodOutput.logits`` holds the backbone logits of the *primary* images, which
are the first ``len(logits)`` rows of the batch; training accuracy is computed on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..models.base import Backbone


class MethodOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]


@dataclass(frozen=True)
class DataNeeds:
    """What a method needs from the data pipeline (the trainer itself knows none of this)."""

    index: bool = False  # pass dataset sample indices as ``index=``
    views: int = 1  # independently augmented views of each sample, concatenated view-major
    class_partners: int = 0  # same-class partners per anchor; batch = [anchors; partners_1; ...]
    partners_in_batch: bool = False  # batch_size counts anchors + partners (BAKE), not anchors only (CS-KD)
    exclude_self: bool = False  # a partner is never its own anchor
    partners_replace: bool = True  # draw an anchor's partners with replacement


class Method(nn.Module):
    """Base class: plain backbone inference, no extra state. Subclasses implement :meth:`compute_loss`."""

    data_needs = DataNeeds()
    # Buffers whose shape can change between steps (e.g. a cached previous batch): they are
    # resized when a checkpoint is loaded instead of failing the shape check.
    resizable_buffers: tuple[str, ...] = ()

    def __init__(self, model: Backbone, num_classes: int):
        super().__init__()
        self.backbone = model
        self.num_classes = num_classes
        self.register_load_state_dict_pre_hook(self._resize_buffers)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None,
                index: torch.Tensor | None = None):
        if not self.training:
            return self.predict(images)
        return self.compute_loss(images, targets, index)

    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor,
                     index: torch.Tensor | None = None) -> MethodOutput:
        raise NotImplementedError

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)[0]

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called by the engine before each training epoch (0-based); not called again when a run resumes
        in the middle of an epoch (the method's buffers come from the checkpoint). Keep per-epoch values in
        tensors (buffers) so compiled graphs do not recompile when they change."""

    def deployable(self) -> nn.Module:
        """The module to export for inference (the plain backbone unless a method says otherwise)."""
        return self.backbone

    def extra_parameters(self) -> int:
        """Trainable parameters the method adds to the backbone."""
        own = {id(p) for p in self.backbone.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in own and p.requires_grad)

    def _resize_buffers(self, module, state_dict, prefix, *args):
        for name in self.resizable_buffers:
            incoming = state_dict.get(prefix + name)
            if incoming is not None:
                setattr(self, name, torch.empty_like(incoming, device=getattr(self, name).device))
