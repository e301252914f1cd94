"""The backbone contract: ``forward(x) -> (logits, [F_1..F_n])``.

A backbone is stem -> stages -> global average pool -> fc. ``F_i`` is the output of stage ``i``
(whatever the architecture puts there, e.g. post-ReLU for post-activation ResNets, raw residual
sums for pre-activation ones). Channel counts and spatial reductions are known at construction so
methods can build their extra modules before the first forward.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class Backbone(nn.Module):
    stem: nn.Module
    stages: nn.ModuleList
    fc: nn.Linear
    stage_channels: list[int]
    stage_reductions: list[int]  # total down-sampling of each stage output w.r.t. the input image
    name: str = "backbone"

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    @property
    def embed_dim(self) -> int:
        return self.fc.in_features

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def embed(self, last: torch.Tensor) -> torch.Tensor:
        """The embedding ``h = GAP(F_n)`` that the classifier reads."""
        return last.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.features(x)
        return self.fc(self.embed(feats[-1])), feats

    def make_stage(self, index: int, blocks: int) -> nn.Module:
        """A new, randomly initialised copy of stage ``index`` (0-based) with ``blocks`` blocks.

        Used by methods that add stage-copy branches (ONE, DKS, MixSKD, BYOT's stage-copy variant).
        """
        raise ConfigError(
            f"Model '{self.name}' cannot build stage copies, which this method needs. "
            "Use a ResNet-family backbone (e.g. cifar_resnet18) for it."
        )


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs (fan_out), unit BN, PyTorch-default linear layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
