"""One training step, shared by the trainer and ``selfkd bench`` so both measure the same thing.

Forward under autocast, backward, optional clipping, optimizer step (:class:`TrainStep`); the statistics
of the steps (loss terms, correct predictions, non-finite flags) are kept on the device (:class:`StepStats`).
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch import nn

from ..comm import all_reduce_max, all_reduce_sum
from ..methods.base import Method


def configure_backends(deterministic: bool = False) -> None:
    """Global kernel choices shared by training and ``selfkd bench``: cuDNN autotuning (unless
    deterministic), TF32 for float32 matmuls/convs on GPUs that have it."""
    import os

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python's, NumPy's and torch's generators and choose the kernels (:func:`configure_backends`)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    configure_backends(deterministic)


def amp_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype of a resolved ``train.amp`` (``auto`` is decided by :meth:`selfkd.config.Config.resolved`)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is None (float32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def build_optimizer(method: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                    no_decay_norm_bias: bool, device: torch.device, pretrained: frozenset[str] = frozenset(),
                    pretrained_lr_scale: float = 1.0) -> torch.optim.SGD:
    """SGD over every trainable parameter of the method (backbone and added modules alike); ``no_decay_norm_bias``:
    no weight decay on 1-D parameters (norms, biases). ``pretrained``: the names of the parameters that came from
    pretrained weights, which train at ``pretrained_lr_scale`` × ``lr`` in groups of their own, after the others'
    (always there, maybe empty, when the scale is not 1; the schedule scales each group's base rate)."""
    named = [(name, p) for name, p in method.named_parameters() if p.requires_grad]
    parts = [named] if pretrained_lr_scale == 1 else [[(n, p) for n, p in named if n not in pretrained],
                                                     [(n, p) for n, p in named if n in pretrained]]
    groups = []
    for part, scale in zip(parts, (1.0, pretrained_lr_scale)):
        params = [p for _, p in part]
        if no_decay_norm_bias:
            groups += [{"params": [p for p in params if p.ndim > 1], "lr": lr * scale},
                       {"params": [p for p in params if p.ndim <= 1], "lr": lr * scale, "weight_decay": 0.0}]
        else:
            groups.append({"params": params, "lr": lr * scale})
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay, **fused)


class StepStats:
    """Running sums over a window of training steps (an epoch), kept on the device: no host sync per step.

    Per step: every named loss term (non-finite values are kept as such, so the trainer can name them), the
    correct predictions among the labelled targets of the primary images (``ignore_index`` excluded: the
    pixels a segmentation mask leaves out; None: every target is labelled), the primary images seen, and the first
    step with a non-finite loss.
    """

    def __init__(self, device: torch.device, ignore_index: int | None = None):
        self.device, self.ignore_index = device, ignore_index
        self.names: list[str] | None = None
        self.sums: torch.Tensor | None = None
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.labelled = torch.zeros((), device=device, dtype=torch.long)
        self.skipped = torch.zeros((), device=device, dtype=torch.long)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.long)  # step index in the window
        self.seen = 0  # primary images (anchors, first views): what an epoch counts
        self.steps = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor,
            losses: dict[str, torch.Tensor]) -> None:
        if self.names is None:
            self.names = ["loss", *losses]
        terms = torch.stack([loss.detach().float(), *(v.detach().float() for v in losses.values())])
        n = logits.shape[0]
        primary = targets[:n]
        labelled = (primary != self.ignore_index if self.ignore_index is not None
                    else torch.ones_like(primary, dtype=torch.bool))
        self.correct += ((logits.detach().argmax(1) == primary) & labelled).sum()
        self.labelled += labelled.sum()
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(terms[0]), self.steps, self.first_bad)
        self.sums = terms if self.sums is None else self.sums + terms
        self.seen += n
        self.steps += 1

    def state(self) -> dict:
        """What a mid-epoch checkpoint keeps, so a resumed epoch continues its statistics."""
        return {"names": self.names, "sums": self.sums, "correct": self.correct, "labelled": self.labelled,
                "skipped": self.skipped, "seen": self.seen, "steps": self.steps}

    def load_state(self, state: dict) -> None:
        self.names, self.seen, self.steps = state["names"], state["seen"], state["steps"]
        self.sums = None if state["sums"] is None else state["sums"].to(self.device)
        for key in ("correct", "skipped"):
            setattr(self, key, state[key].to(self.device))
        # selfkd 0.1 checkpoints did not count labelled targets: for classification every primary image is one
        self.labelled = torch.as_tensor(state.get("labelled", self.seen), device=self.device)

    def summary(self, accuracy: str = "top1") -> dict[str, float]:
        """Mean of each loss term over the window's steps and the training accuracy (in %, under
        ``train/<accuracy>``), summed over processes first (one host sync)."""
        if self.sums is None or self.steps == 0:
            return {}
        counts = torch.stack([self.correct, self.labelled, self.skipped]).double()
        packed = torch.cat([self.sums.double(), counts,
                            torch.tensor([self.steps], dtype=torch.float64, device=self.device)])
        packed = all_reduce_sum(packed).tolist()
        k = len(self.names)
        sums, (correct, labelled, skipped, steps) = packed[:k], packed[k:]
        out = {"train/loss" if name == "loss" else f"train/loss_{name}": v / steps for name, v in zip(self.names, sums)}
        out[f"train/{accuracy}"] = 100.0 * correct / max(1.0, labelled)
        if skipped:
            out["train/skipped_steps"] = int(skipped)
        return out

    def nonfinite(self) -> tuple[int, list[str]] | None:
        """``(step in window, names of non-finite terms)`` of the first non-finite loss on any rank, else None.

        One sync and one collective: every rank gets the same answer, so all stop together.
        """
        if self.sums is None:
            return None
        none = float(self.steps)  # past the window: "no bad step" (its negation loses any max against a real one)
        first = torch.where(self.first_bad >= 0, self.first_bad.double(), torch.full((), none, device=self.device))
        packed = all_reduce_max(torch.cat([-first.reshape(1), (~torch.isfinite(self.sums)).double()])).tolist()
        step, bad = int(-packed[0]), packed[1:]
        if step == self.steps:
            return None
        return step, [name for name, b in zip(self.names, bad) if b and name != "loss"] or ["loss"]


class TrainStep:
    """Forward under autocast, backward through a gradient scaler (enabled for fp16 only), optional clipping,
    optimizer step; the method is compiled (static shapes) as asked, and wrapped in DDP by :meth:`distribute`.

    With ``accumulate = N > 1`` each call back-propagates ``loss / N`` and the optimizer steps on every N-th call
    (and on the call marked ``last`` of an epoch); under DDP only those calls all-reduce the gradients.
    ``pending`` counts the calls since the last optimizer step.
    """

    def __init__(self, method: Method, optimizer: torch.optim.Optimizer, device: torch.device, amp: str = "off",
                 compile_mode: str = "off", grad_clip: float | None = None, skip_nonfinite: bool = False,
                 ignore_index: int | None = None, accumulate: int = 1, clip_mode: str = "norm"):
        self.method, self.optimizer, self.device = method, optimizer, device
        self.dtype = amp_dtype(amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.grad_clip, self.skip_nonfinite, self.ignore_index = grad_clip, skip_nonfinite, ignore_index
        self.accumulate, self.clip_mode, self.pending = accumulate, clip_mode, 0
        self.pass_index = method.data_needs.index
        model: nn.Module = method
        if compile_mode != "off":
            # Static shapes: every batch size (an epoch's smaller last batch too) gets its own specialised graph.
            # By default the second size seen would make torch.compile trace one dynamic-shape graph, and every
            # later step, full batches included, would run that slower generic graph.
            model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
        self.model = model
        self.reset()

    def distribute(self) -> None:
        """Wrap the (compiled) method in DDP, which copies the main process's parameters and buffers to every
        process: a collective, so every process calls it, outside any check that can fail on some of them."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers are per process: DSR/DLB caches must not be overwritten by the main process's.
        self.model = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)

    def reset(self) -> None:
        """Start a new statistics window (e.g. an epoch)."""
        self.stats = StepStats(self.device, self.ignore_index)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None = None,
                 last: bool = False) -> None:
        with autocast(self.device, self.dtype):
            out = self.model(images, targets, index if self.pass_index else None)
        if self.skip_nonfinite and self._any_rank_nonfinite(out.loss):  # host sync only in this opt-in mode
            self.optimizer.zero_grad(set_to_none=True)  # with accumulation, the window so far is dropped too
            self.pending = 0
            self.stats.skipped += 1
            return
        update = last or self.pending + 1 == self.accumulate
        loss = out.loss / self.accumulate if self.accumulate > 1 else out.loss
        no_sync = getattr(self.model, "no_sync", None) if not update else None  # DDP: all-reduce on updates only
        with no_sync() if no_sync else contextlib.nullcontext():
            self.scaler.scale(loss).backward()
        self.pending += 1
        if update:
            self._update()
        self.stats.add(out.logits, targets, out.loss, out.losses)

    def _update(self) -> None:
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = self.method.parameters()
            if self.clip_mode == "value":
                torch.nn.utils.clip_grad_value_(params, self.grad_clip, foreach=True)
            else:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0

    @staticmethod
    def _any_rank_nonfinite(loss: torch.Tensor) -> bool:
        """All ranks must skip together, or DDP's gradient all-reduce would hang."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        return bool(all_reduce_sum(bad).item())
