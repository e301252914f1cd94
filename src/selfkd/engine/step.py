"""One training step, shared by the trainer and ``selfkd bench`` so both measure the same thing.

Forward under autocast, backward, optional clipping, optimizer step. Statistics (loss terms,
correct predictions, non-finite flags) are accumulated on the device: no host sync per step.
"""
from __future__ import annotations

import contextlib

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


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``, or nothing when ``dtype`` is None (float32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def build_optimizer(method: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                    no_decay_norm_bias: bool, device: torch.device) -> torch.optim.SGD:
    """SGD over every trainable parameter of the method (backbone and added modules alike)."""
    params = [p for p in method.parameters() if p.requires_grad]
    if no_decay_norm_bias:
        decay = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]
        groups = [{"params": decay}, {"params": plain, "weight_decay": 0.0}]
    else:
        groups = [{"params": params}]
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay, **fused)


class TrainStep:
    def __init__(self, method: Method, optimizer: torch.optim.Optimizer, device: torch.device, amp: str = "auto",
                 compile_mode: str = "off", grad_clip: float | None = None, skip_nonfinite: bool = False,
                 ddp: bool = False):
        self.method, self.optimizer, self.device = method, optimizer, device
        self.dtype = amp_dtype(amp, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.grad_clip, self.skip_nonfinite = grad_clip, skip_nonfinite
        self.pass_index = method.data_needs.index
        model: nn.Module = method
        if compile_mode != "off":
            # Static shapes: every batch size (an epoch's smaller last batch too) gets its own specialised graph.
            # By default the second size seen would make torch.compile trace one dynamic-shape graph, and every
            # later step, full batches included, would run that slower generic graph.
            model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode, dynamic=False)
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            # Buffers are per rank: DSR/DLB caches must not be overwritten by rank 0's.
            model = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        self.model = model
        self.names: list[str] | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new accumulation window (e.g. an epoch)."""
        self.sums: torch.Tensor | None = None
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.seen = 0
        self.steps = 0
        self.skipped = torch.zeros((), device=self.device, dtype=torch.long)
        self.first_bad = torch.full((), -1, device=self.device, dtype=torch.long)  # step index in the window
        self._counter = torch.zeros((), device=self.device, dtype=torch.long)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor | None = None) -> None:
        with autocast(self.device, self.dtype):
            out = self.model(images, targets, index if self.pass_index else None)
        loss = out.loss
        if self.names is None:
            self.names = ["loss", *out.losses]
        terms = torch.stack([loss.detach().float(), *(v.detach().float() for v in out.losses.values())])
        if self.skip_nonfinite and self._any_rank_nonfinite(loss):  # host sync only in this opt-in mode
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            return
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.grad_clip, foreach=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.grad_clip, foreach=True)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        n = out.logits.shape[0]
        self.correct += (out.logits.detach().argmax(1) == targets[:n]).sum()
        self.seen += n
        self.steps += 1
        # Non-finite terms are kept as such (sum becomes inf/nan), so the trainer can name them.
        self.sums = terms if self.sums is None else self.sums + terms
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(terms[0]), self._counter, self.first_bad)
        self._counter += 1

    @staticmethod
    def _any_rank_nonfinite(loss: torch.Tensor) -> bool:
        """All ranks must skip together, or DDP's gradient all-reduce would hang."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        return bool(all_reduce_sum(bad).item())

    def window_state(self) -> dict:
        """The running statistics of the current window, so a mid-epoch checkpoint resumes them."""
        return {"names": self.names, "sums": self.sums, "correct": self.correct, "seen": self.seen,
                "steps": self.steps, "skipped": self.skipped}

    def load_window_state(self, state: dict) -> None:
        self.names = state["names"]
        self.sums = None if state["sums"] is None else state["sums"].to(self.device)
        self.correct = state["correct"].to(self.device)
        self.skipped = state["skipped"].to(self.device)
        self.seen, self.steps = state["seen"], state["steps"]

    def summary(self) -> dict[str, float]:
        """Mean of each loss term and training accuracy over the window (one host sync)."""
        if self.sums is None or self.steps == 0:
            return {}
        # One reduction over ranks: [term sums..., correct, seen, steps, skipped].
        packed = torch.cat([self.sums.double(), torch.stack([self.correct, self.skipped]).double(),
                            torch.tensor([self.seen, self.steps], dtype=torch.float64, device=self.device)])
        packed = all_reduce_sum(packed).tolist()
        k = len(self.names)
        sums, (correct, skipped, seen, steps) = packed[:k], packed[k:]
        out = {f"train/{name}" if name == "loss" else f"train/loss_{name}": v / steps
               for name, v in zip(self.names, sums)}
        out["train/top1"] = 100.0 * correct / max(1.0, seen)
        skipped = int(skipped)
        if skipped:
            out["train/skipped_steps"] = skipped
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
