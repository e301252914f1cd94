"""The method contract.

A method is an ``nn.Module`` that holds the model (a classification backbone or a segmenter) and
whatever it adds (heads, self-teacher, per-sample tables). In training mode
``method(images, targets, index=None)`` returns a :class:`MethodOutput`; in eval mode ``method(images)``
returns the logits used for inference. The engine sums nothing itself: it logs every term of ``losses``
and back-propagates ``loss``. A method belongs to one task (``task``, the registry it is registered in).

Batch layout: the data pipeline gathers a batch from a vector of sample indices that the method's
:class:`DataNeeds` shapes — several views are concatenated view-major (``[x¹; x²]``), same-class
partners follow their anchors block-wise (``[anchors; partners]``), and ``targets``/``index`` have one
entry per image. ``MethodOutput.logits`` holds the backbone logits of the *primary* images, which
are the first ``len(logits)`` rows of the batch; training accuracy is computed on them.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..data.needs import DataNeeds
from ..models.base import Backbone


class MethodOutput(NamedTuple):
    logits: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]


class Method(nn.Module):
    """Base class: plain backbone inference, no extra state. Subclasses implement :meth:`compute_loss`."""

    task = "classification"
    data_needs = DataNeeds()
    # Buffers whose shape can change between steps (e.g. a cached previous batch): they are
    # resized when a checkpoint is loaded instead of failing the shape check.
    resizable_buffers: tuple[str, ...] = ()
    # Buffers the method keeps identical on every process under torchrun (e.g. gathered from all of them); every
    # other buffer is per process, and a checkpoint keeps each process's copy.
    shared_buffers: tuple[str, ...] = ()
    # BatchNorm modules of the model kept in eval mode in training (model.freeze_bn), by their names in the model.
    frozen_norms: tuple[str, ...] = ()
    # Where `selfkd tune` searches by default: {option: selfkd.registry.Range or Choice}, within the option's limits
    # (tests/test_method_rules.py checks every method's against its constructor). Empty: nothing but what --space adds.
    search_space: dict = {}

    def __init__(self, model: Backbone, num_classes: int):
        super().__init__()
        self.backbone = model
        self.num_classes = num_classes
        self.register_load_state_dict_pre_hook(self._resize_buffers)

    def freeze_norms(self, names: list[str]) -> None:
        """Keep the model's BatchNorm modules ``names`` in eval mode from now on, training or not: they normalise with
        their running statistics, which stay as they are; their affine weights still train."""
        self.frozen_norms = tuple(names)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen_norms:
            self.backbone.get_submodule(name).eval()
        return self

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

    def eval_model(self) -> nn.Module:
        """The module that evaluation runs and export writes: the backbone, or the method itself when it
        predicts with more than the backbone (then ``method(images)`` in eval mode gives the logits).
        One module serves both, so the exported weights are exactly what was evaluated."""
        return self.backbone

    @classmethod
    def example_options(cls, model: nn.Module, folder: Path) -> dict:
        """Options this method cannot be built without (e.g. a teacher file), made up for tests and benchmarks;
        files it needs are written in ``folder``."""
        return {}

    def extra_parameters(self) -> int:
        """Trainable parameters the method adds to the backbone."""
        own = {id(p) for p in self.backbone.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in own and p.requires_grad)

    def _resize_buffers(self, module, state_dict, prefix, *args):
        for name in self.resizable_buffers:
            incoming = state_dict.get(prefix + name)
            if incoming is not None:
                setattr(self, name, torch.empty_like(incoming, device=getattr(self, name).device))
