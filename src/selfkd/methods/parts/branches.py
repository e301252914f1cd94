"""Stage-copy branches, shared by ONE, DKS, MixSKD and BYOT's ``stage_copy`` variant.

A branch from ``F_i`` is a new, randomly initialised copy of stages ``i+1..n`` (the first block of each
copied stage keeps its down-sampling), then GAP and a new ``Linear(c_n → K)``. No weight is copied from
the backbone. Backbones that cannot build stage copies raise their ``ConfigError`` from ``make_stage``.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError
from ...models.base import Backbone


def stage_blocks(model: Backbone, index: int) -> int:
    """Number of blocks of the backbone's stage ``index`` (0-based); 1 for a stage that is one module."""
    stage = model.stages[index]
    return len(stage) if isinstance(stage, (nn.Sequential, nn.ModuleList)) else 1


def check_source_stage(model: Backbone, stage: int, option: str) -> None:
    """A branch point must be a 1-based stage number with at least one stage after it."""
    n = len(model.stages)
    if not 1 <= stage < n:
        raise ConfigError(
            f"{option}={stage} is not a stage a branch can start from: '{getattr(model, 'name', 'the model')}' has "
            f"{n} stages, so use a stage number from 1 to {n - 1} (the branch copies the stages after it)."
        )


class StageCopyBranch(nn.Module):
    """Copies of stages ``source+1..n`` (``source`` 1-based, the stage whose output feeds it) → GAP → FC.

    ``blocks`` gives the block count of each copied stage (default: the backbone's own counts).
    ``forward(F_source) -> (logits, final_map)``.
    """

    def __init__(self, model: Backbone, source: int, num_classes: int, blocks: list[int] | None = None):
        super().__init__()
        copied = range(source, len(model.stages))  # 0-based indices of stages source+1..n
        blocks = blocks if blocks is not None else [stage_blocks(model, i) for i in copied]
        self.stages = nn.Sequential(*(model.make_stage(i, b) for i, b in zip(copied, blocks)))
        self.fc = nn.Linear(model.stage_channels[-1], num_classes)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.stages(feature)
        return self.fc(final.mean(dim=(2, 3))), final
