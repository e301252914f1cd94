"""FRSKD's self-teacher network: a BiFPN over the classifier's stage features.

Two variants:

- ``bifpnc`` (default): level ``i`` has ``d_i = w·c_i`` channels, so resampling between levels needs
  the ``k1`` convs (1×1 conv → BN → ReLU: ``cbr(·, ·, 1)``) inside ``Up``/``Down``. 6,375,794 parameters on a
  CIFAR ResNet-18 with K = 100 (w = 2), 411,885 on WRN-16-2.
- ``bifpn``: one width ``d`` (256) at every level. The lateral projections ``L_i``/``L'_i`` still map
  ``c_i → d`` (nothing else could bring the stage features to a common width), but ``Up``/``Down`` are
  plain resampling without projection convs. 681,581 parameters on WRN-16-2 (K = 100), ≈ 0.97× the
  703,060 of FRSKD's WRN-16-2 classifier, as the paper reports.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...models.base import init_weights
from ...models.segmentation import cbr


class SeparableBlock(nn.Sequential):
    """``k3(d)``, depth 2: [dw 3×3 → 1×1 → BN] → [ReLU → dw 3×3 → 1×1 → BN]; ends in BN, no ReLU."""

    def __init__(self, channels: int):
        d = channels
        super().__init__(
            nn.Conv2d(d, d, 3, 1, 1, groups=d, bias=False), nn.Conv2d(d, d, 1, bias=False), nn.BatchNorm2d(d),
            nn.ReLU(inplace=True),
            nn.Conv2d(d, d, 3, 1, 1, groups=d, bias=False), nn.Conv2d(d, d, 1, bias=False), nn.BatchNorm2d(d),
        )

    @property
    def output_bn(self) -> nn.BatchNorm2d:
        return self[-1]


class Fusion(nn.Module):
    """Fast normalised fusion ``Σ_j ŵ_j·ReLU(x_j)``, ``ŵ = ReLU(w) / (Σ ReLU(w) + 1e-6)``, ``w`` starting at 1.

    The inputs come rectified already (``SelfTeacher.forward`` applies each ReLU once), so none is applied here.
    """

    eps = 1e-6

    def __init__(self, inputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(inputs))

    def normalised_weights(self) -> torch.Tensor:
        w = F.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        w = self.normalised_weights()
        out = w[0] * inputs[0]
        for j in range(1, len(inputs)):
            out = out + w[j] * inputs[j]
        return out


class Upsample(nn.Module):
    """``Up``: nearest upsampling of a rectified map to the exact size of the target level, then ``k1`` (if
    widths differ)."""

    def __init__(self, cin: int, cout: int, project: bool):
        super().__init__()
        self.project = cbr(cin, cout, 1) if project else nn.Identity()

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.project(F.interpolate(x, size=size, mode="nearest"))


class Downsample(nn.Module):
    """``Down``: 3×3 stride-2 max-pool of a rectified map with TensorFlow "same" padding, then ``k1`` (if widths
    differ).

    The padding is the one that yields the target level's size: ``(out − 1)·2 + 3 − H``, split
    ``⌊·/2⌋`` before and the rest after, which is TF's "same" rule for ``out = ⌈H/2⌉`` and also fits
    backbones that round down. Padded cells are −∞, so they never win the max.
    """

    def __init__(self, cin: int, cout: int, project: bool):
        super().__init__()
        self.project = cbr(cin, cout, 1) if project else nn.Identity()

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        pads = []
        for have, want in zip(reversed(x.shape[-2:]), reversed(size)):  # F.pad order: last dim first
            total = max((want - 1) * 2 + 3 - have, 0)
            pads += [total // 2, total - total // 2]
        x = F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)
        return self.project(x)


class TeacherOutput(NamedTuple):
    logits: torch.Tensor  # t = Linear(GAP(ReLU(T_n)))
    features: list[torch.Tensor]  # ReLU(T_i), i = 1..n
    preact: list[torch.Tensor]  # T_i (BN outputs, before the ReLU)


class SelfTeacher(nn.Module):
    """The BiFPN self-teacher over ``n ≥ 2`` stage features with channels ``stage_channels``.

    ``widths`` are the level widths ``d_i``; ``resample_convs`` puts a ``k1`` into ``Up``/``Down``
    (BiFPNc) or leaves them plain resampling (uniform-width BiFPN). Forward (1-indexed)::

        P_n = L_n;  P_i = k3_up_i(fuse(L_i, Up(P_{i+1})))                 i = n−1 … 1
        T_1 = P_1;  T_i = k3_down_i(fuse(L'_i, P_i, Down(T_{i−1})))         1 < i < n
        T_n = k3_down_n(fuse(L'_n, Down(T_{n−1})))

    Every fused or resampled map is rectified, each ReLU computed once: ``L_i``, ``L'_i`` and the ``k1``
    outputs of ``Up``/``Down`` end in ReLU already; ``ReLU(P_i)`` and ``ReLU(T_i)`` are taken once and reused.
    """

    def __init__(self, stage_channels: list[int], widths: list[int], num_classes: int, resample_convs: bool = True):
        super().__init__()
        n = len(stage_channels)
        if n < 2 or len(widths) != n:
            raise ConfigError(
                f"The FRSKD self-teacher needs at least 2 stage features with one width each; got stage channels "
                f"{stage_channels} and widths {widths}. Use a backbone with several resolution stages."
            )
        self.widths = list(widths)
        c, d, project = stage_channels, widths, resample_convs
        self.lateral = nn.ModuleList(cbr(c[i], d[i], 1) for i in range(n))
        self.lateral_bottom_up = nn.ModuleList(cbr(c[i], d[i], 1) for i in range(1, n))  # L'_2..L'_n
        self.up = nn.ModuleList(Upsample(d[i + 1], d[i], project) for i in range(n - 1))  # into levels 1..n−1
        self.fuse_up = nn.ModuleList(Fusion(2) for _ in range(n - 1))
        self.refine_up = nn.ModuleList(SeparableBlock(d[i]) for i in range(n - 1))
        self.down = nn.ModuleList(Downsample(d[i - 1], d[i], project) for i in range(1, n))  # into levels 2..n
        self.fuse_down = nn.ModuleList(Fusion(3 if i < n - 1 else 2) for i in range(1, n))
        self.refine_down = nn.ModuleList(SeparableBlock(d[i]) for i in range(1, n))
        self.fc = nn.Linear(d[-1], num_classes)
        init_weights(self)

    def output_bns(self) -> list[nn.BatchNorm2d]:
        """The BN that produces each ``T_i`` (for the overhaul margin)."""
        return [self.refine_up[0].output_bn, *(block.output_bn for block in self.refine_down)]

    def forward(self, feats: list[torch.Tensor]) -> TeacherOutput:
        n = len(feats)
        lateral = [proj(f) for proj, f in zip(self.lateral, feats)]
        p = [None] * n  # P_i
        relu_p = [None] * n  # ReLU(P_i); P_n = L_n ends in ReLU
        p[n - 1] = relu_p[n - 1] = lateral[n - 1]
        for i in range(n - 2, -1, -1):
            up = self.up[i](relu_p[i + 1], lateral[i].shape[-2:])
            p[i] = self.refine_up[i](self.fuse_up[i]([lateral[i], up]))
            relu_p[i] = F.relu(p[i])
        t, features = [p[0]], [relu_p[0]]  # T_i and ReLU(T_i)
        for i in range(1, n):
            inputs = [self.lateral_bottom_up[i - 1](feats[i])]
            if i < n - 1:
                inputs.append(relu_p[i])
            inputs.append(self.down[i - 1](features[i - 1], inputs[0].shape[-2:]))
            t.append(self.refine_down[i - 1](self.fuse_down[i - 1](inputs)))
            features.append(F.relu(t[i]))
        logits = self.fc(features[-1].mean(dim=(2, 3)))
        return TeacherOutput(logits, features, t)


def build_self_teacher(variant: str, stage_channels: list[int], stage_reductions: list[int], num_classes: int,
                       width: int | None = None, channels: int | None = None) -> SelfTeacher:
    """``bifpnc``: ``d_i = width·c_i`` (width 2); ``bifpn``: ``d_i = channels`` (256) at every level."""
    ratios = [b / a for a, b in zip(stage_reductions, stage_reductions[1:])]
    if any(r != 2 for r in ratios):
        raise ConfigError(
            f"The FRSKD self-teacher joins levels by ×2 resampling, but this backbone's stage reductions are "
            f"{stage_reductions} (each stage must halve the resolution of the previous one). Use a backbone whose "
            "stages each down-sample by 2 (ResNets, WRNs)."
        )
    if variant == "bifpnc":
        if channels is not None:
            raise ConfigError("Option 'channels' sets the uniform width of teacher='bifpn'; for teacher='bifpnc' "
                              "set the width factor 'width' instead (default 2).")
        width = 2 if width is None else width
        return SelfTeacher(stage_channels, [width * c for c in stage_channels], num_classes, resample_convs=True)
    if width is not None:
        raise ConfigError("Option 'width' is the channel factor of teacher='bifpnc'; for teacher='bifpn' set the "
                          "uniform width 'channels' instead (default 256).")
    channels = 256 if channels is None else channels
    return SelfTeacher(stage_channels, [channels] * len(stage_channels), num_classes, resample_convs=False)
