"""Per-iteration learning-rate factor: linear warm-up, then multi-step, cosine or constant."""
from __future__ import annotations

import math

from ..config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Factor applied to each group's base lr at global iteration ``step`` (0-based).

    Warm-up: ``(step+1)/(warmup_epochs·steps_per_epoch)`` (Self-KD-Lib's per-iteration form).
    Multi-step: ``gamma^{#milestones ≤ epoch}`` with 0-based epochs, or ``≤ epoch − warmup`` when
    ``milestones_after_warmup``. Cosine: half a cosine from the end of warm-up to the last step.
    """
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    epoch = step // steps_per_epoch
    if cfg.name == "multistep":
        ref = epoch - cfg.warmup_epochs if cfg.milestones_after_warmup else epoch
        return cfg.gamma ** sum(m <= ref for m in cfg.milestones)
    if cfg.name == "cosine":
        total = max(1, epochs * steps_per_epoch - warm)
        t = min(1.0, (step - warm) / total)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0
