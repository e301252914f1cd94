"""LightSKD: DRG (reverse guidance from an intermediate-stage head) and DSR (shape-wise regularisation).

Xu et al., "Lightweight Self-Knowledge Distillation with Multi-source Information Fusion", 2023. The three
registered names switch the two terms on and off (``KD_T(t, s) = T²·(1/B) Σ_b KL(σ(sg t_b/T) ‖ σ(s_b/T))``,
``z`` the backbone logits, ``a`` the auxiliary head's, ``s_t`` the sorted logits of step ``t``):

- ``drg``:      CE(z) + CE(a) + α·KD_T(a, z)
- ``dsr``:      CE(z) + β·KD_T(s_{t−1}, s_t)
- ``lightskd``: CE(z) + CE(a) + α·KD_T(a, z) + β·KD_T(s_{t−1}, s_t)

Inference uses the backbone alone. ``tests/test_fidelity_lightskd.py`` compares ``drg`` and ``lightskd`` (and so DSR's
term) with the official code step by step (README "Fidelity").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import cross_entropy, kd_prob_loss, upcast
from ..models.base import Backbone, init_weights
from ..registry import NonNegative, Positive, Range
from .base import Method, MethodOutput
from .registry import register_method


class SepConv(nn.Sequential):
    """Depthwise-separable block of the DRG head: [dw 3×3 (stride) → 1×1 → BN → ReLU] → [dw 3×3 → 1×1 (cin→cout) → BN
    → ReLU]."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.Conv2d(cin, cin, 1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ReverseGuidanceHead(nn.Module):
    """DRG auxiliary classifier on a stage output with ``c`` channels.

    Attention ``SepConv(c, c) → BN → ReLU → bilinear upsample (align_corners) → sigmoid`` gates the
    feature; ``SepConv(c, 2c) → SepConv(2c, 4c) → GAP → Linear(4c, K)`` classifies it. The ReLU before
    the sigmoid keeps the mask in [0.5, 1), as the paper's code trains it. The mask is upsampled to the
    exact size of the feature, so odd sizes work. 342,116 parameters for c = 128, K = 100.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        c = channels
        self.attention = nn.Sequential(SepConv(c, c), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(
            SepConv(c, 2 * c), SepConv(2 * c, 4 * c), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * c, num_classes),
        )
        init_weights(self)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        mask = F.interpolate(self.attention(feature), size=feature.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(torch.sigmoid(mask) * feature)


class LightSKDTerms(Method):
    """Shared implementation of DRG and DSR; the registered subclasses choose which terms are on.

    DRG is on when ``stages`` is given (one head per 1-based stage number), DSR when ``beta`` is.
    Loss terms: ``ce``, then ``drg_ce`` (sum of the heads' CE) and ``drg_kd``, then ``dsr``. The registered
    subclasses' signatures carry the limits of the options (checked by ``create_method``).
    """

    def __init__(self, model: Backbone, num_classes: int, temperature: float,
                 alpha: float | None = None, stages: tuple[int, ...] | None = None, beta: float | None = None):
        super().__init__(model, num_classes)
        self.temperature, self.alpha, self.beta = temperature, alpha, beta
        self.head_stages = self._check_stages(model, stages) if stages is not None else ()
        self.heads = nn.ModuleList(ReverseGuidanceHead(model.stage_channels[s - 1], num_classes)
                                   for s in self.head_stages)
        self.use_dsr = beta is not None
        if self.use_dsr:
            # s_{t−1}: the sorted logits of the previous step in the first dsr_prev_rows rows of a cache that
            # grows to the largest batch seen; dsr_prev_rows = 0 means "no previous step in this epoch".
            self.register_buffer("dsr_prev", torch.zeros(0, num_classes))
            self.register_buffer("dsr_prev_rows", torch.zeros((), dtype=torch.long))
            self.resizable_buffers = ("dsr_prev",)  # its size is that of the largest batch seen

    @staticmethod
    def _check_stages(model: Backbone, stages: tuple[int, ...]) -> tuple[int, ...]:
        n = len(model.stage_channels)
        if not stages or len(set(stages)) != len(stages) or any(not 1 <= s <= n for s in stages):
            raise ConfigError(
                f"stages={list(stages)} is not a list of distinct stage numbers between 1 and {n} "
                f"({model.name} has {n} stages, numbered from 1). The paper's default is stages=[2]."
            )
        return tuple(stages)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if self.use_dsr:
            self.dsr_prev_rows.zero_()  # the cache starts empty each epoch (as in the paper's code)

    def compute_loss(self, images, targets, index=None):
        logits, feats = self.backbone(images)
        losses = {"ce": cross_entropy(logits, targets)}
        if self.heads:
            losses.update(self._drg_terms(logits, feats, targets))
        if self.use_dsr:
            losses["dsr"] = self._dsr_term(logits)
        return MethodOutput(logits, sum(losses.values()), losses)

    def _drg_terms(self, logits, feats, targets) -> dict[str, torch.Tensor]:
        """DRG: each head learns from its CE only; the final classifier is distilled from the mean of the
        heads' softened distributions, α·KDp_T(mean_j σ(a_j/T), z) (with one head, exactly α·KD_T(a, z))."""
        aux = [head(feats[s - 1]) for head, s in zip(self.heads, self.head_stages)]
        teacher = torch.stack([F.softmax(upcast(a.detach()) / self.temperature, dim=1) for a in aux]).mean(0)
        return {
            "drg_ce": sum(cross_entropy(a, targets) for a in aux),
            "drg_kd": self.alpha * kd_prob_loss(teacher, logits, self.temperature),
        }

    def _dsr_term(self, logits) -> torch.Tensor:
        """DSR: β·KD_T(s_{t−1}, s_t) with s = ascending sort of the logits (differentiable), pairing the
        first min(B_t, B_{t−1}) rows by position; 0 on the first step of an epoch."""
        batch = logits.shape[0]
        if self.dsr_prev.shape[0] < batch:
            self._grow_cache(batch)
        current = upcast(logits).sort(dim=1).values
        # Rows [0, dsr_prev_rows) of the cache hold s_{t−1}. A row mask instead of a slice keeps every shape
        # fixed, and the term is 0 when there is no previous batch (dsr_prev_rows = 0).
        paired = torch.arange(batch, device=logits.device) < self.dsr_prev_rows
        target = F.softmax(self.dsr_prev[:batch] / self.temperature, dim=1) * paired[:, None]
        term = kd_prob_loss(target, current, self.temperature) * batch / paired.sum().clamp(min=1)
        # Copy into storage the method owns: a reference to a graph output breaks under CUDA graphs.
        self.dsr_prev[:batch].copy_(current.detach())
        self.dsr_prev_rows.fill_(batch)
        return self.beta * term

    @torch.compiler.disable
    def _grow_cache(self, rows: int) -> None:
        """Room for ``rows`` sorted logits, allocated outside any compiled graph (memory allocated inside a
        CUDA graph belongs to the graph and is overwritten by its next replay). Runs before the cache is read,
        on the first step and whenever a batch is larger than all before it."""
        grown = self.dsr_prev.new_zeros(rows, self.num_classes)
        grown[: self.dsr_prev.shape[0]] = self.dsr_prev
        self.dsr_prev = grown


@register_method("drg")
class DRG(LightSKDTerms):
    """DRG, distillation with reverse guidance: LightSKD's first term alone (Xu et al., "Lightweight
    Self-Knowledge Distillation with Multi-source Information Fusion", 2023)::

        L = CE(z, y) + CE(a, y) + α·KD_T(a, z)        α = 0.2, T = 4, stages = [2]

    ``a`` are the logits of a :class:`ReverseGuidanceHead` on stage 2: an intermediate stage, which sees
    lower-level information, teaches the final classifier. The head's logits are detached in the KD term,
    so the head learns from its CE only (which also trains stages 1–2 through the undetached feature).
    ``stages=[2, 3]`` (beyond the official code, which has one head) gives each stage its own head and CE;
    the teacher is the mean of the heads' softened distributions. Inference uses the backbone alone.

    Reference code: its flags could not switch DSR off (any string given was true), and had they done so
    the step would have crashed (the DSR cache update reads sorted logits that only DSR computes); its head
    was hard-wired for 512 input channels, so its default ResNet-18 crashed. Nothing there to reproduce.
    """

    search_space = {"alpha": Range(0.02, 2.0, log=True), "temperature": Range(1.0, 8.0)}

    def __init__(self, model: Backbone, num_classes: int, alpha: NonNegative = 0.2, temperature: Positive = 4.0,
                 stages: tuple[int, ...] = (2,)):
        super().__init__(model, num_classes, temperature, alpha=alpha, stages=stages)


@register_method("dsr")
class DSR(LightSKDTerms):
    """DSR, distillation with shape-wise regularisation: LightSKD's second term alone (Xu et al.,
    "Lightweight Self-Knowledge Distillation with Multi-source Information Fusion", 2023)::

        s_t = sort(z_t) ascending (gradient flows through the sort)
        L = CE(z, y) + β·KD_T(s_{t−1}, s_t)          β = 1, T = 4

    The ranked output distribution should have the same shape for all data, so this step's sorted logits are
    pulled towards the previous step's (detached, kept in a buffer). Rows are paired by position, the first
    ``min(B_t, B_{t−1})`` when the sizes differ; the term is 0 on the first step of each epoch (the cache
    starts empty each epoch, as in the paper's code). No parameters added.

    Reference code: its DSR cache was only updated when DRG was on, so DSR alone compared the sorted logits
    with a random tensor; this is not reproduced (it is no method). Its head and the head's CE were always in
    the loss: ``lightskd`` with ``alpha=0`` gives CE(z) + CE(a) + DSR.
    """

    search_space = {"beta": Range(0.1, 10.0, log=True), "temperature": Range(1.0, 8.0)}

    def __init__(self, model: Backbone, num_classes: int, beta: NonNegative = 1.0, temperature: Positive = 4.0):
        super().__init__(model, num_classes, temperature, beta=beta)


@register_method("lightskd")
class LightSKD(LightSKDTerms):
    """LightSKD = DRG + DSR (Xu et al., "Lightweight Self-Knowledge Distillation with Multi-source Information
    Fusion", 2023); see :class:`DRG` and :class:`DSR` for each term::

        L = CE(z, y) + CE(a, y) + α·KD_T(a, z) + β·KD_T(s_{t−1}, s_t)      α = 0.2, β = 1, T = 4, stages = [2]

    Reference code: this setting matches it except that it added a constant 100 to the loss, which changes
    no gradient and is not reproduced. Inference uses the backbone alone.
    """

    search_space = {"alpha": Range(0.02, 2.0, log=True), "beta": Range(0.1, 10.0, log=True),
                    "temperature": Range(1.0, 8.0)}

    def __init__(self, model: Backbone, num_classes: int, alpha: NonNegative = 0.2, temperature: Positive = 4.0,
                 beta: NonNegative = 1.0, stages: tuple[int, ...] = (2,)):
        super().__init__(model, num_classes, temperature, alpha=alpha, stages=stages, beta=beta)
