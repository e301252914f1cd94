"""Any timm model as a backbone: ``create_model("timm:<name>", num_classes)``, randomly initialised; timm's pretrained
weights come through ``model.pretrained`` (:mod:`selfkd.models.pretrained`, which loads them with timm's own
mechanism and reports what it loaded).

Stage features come from timm's feature interface (``forward_intermediates``, timm >= 1.0) at the
levels of ``model.feature_info`` (all of them, or ``out_indices``); ``stage_channels`` and
``stage_reductions`` are read from ``feature_info``; logits come from the model's own head.

Where the head pools a feature map (convolutional models), the last stage output is the map the head
reads, i.e. after the model's final layers (EfficientNet/MobileNetV2's conv_head + BN), and
``embed(F_n)`` is the head up to its classifier (``forward_head(F_n, pre_logits=True)``: GAP, plus
e.g. MobileNetV3's conv_head or ConvNeXt's norm), so ``fc(embed(F_n))`` gives the logits.
Token models (ViT) and NHWC models (Swin) still give NCHW stage maps, but their head reads other
features: ``embed`` raises there. ``stem``/``stages``/``make_stage`` do not exist for timm models.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from ..errors import ConfigError, first_line, short
from .base import Backbone


def create_timm_backbone(name: str, num_classes: int, in_channels: int = 3, out_indices: list[int] | None = None,
                         **kwargs) -> TimmBackbone:
    """``timm.create_model(name, pretrained=False, ...)`` wrapped as a :class:`TimmBackbone`;
    ``kwargs`` go to timm (e.g. ``drop_rate``, ``drop_path_rate``)."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"Model 'timm:{name}' needs the timm package, which is not installed. "
            "Install it with: pip install 'selfkd[timm]' (or pick a built-in model: selfkd list models)."
        ) from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.5)
        hint = f" Closest timm names: {', '.join(close)}." if close else ""
        raise ConfigError(f"Unknown timm model {short(name)}.{hint} `timm.list_models('*pattern*')` lists them all.")
    if "pretrained" in kwargs:
        raise ConfigError(f"timm:{name}: pretrained weights are not a model option; set model.pretrained (e.g. "
                          "imagenet, or one of timm's tags) in the config, which loads and reports them.")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as err:
        raise ConfigError(f"timm model '{name}' does not accept these options {short(sorted(kwargs))}: "
                          f"{first_line(err)}.") from None
    return TimmBackbone(model, name, out_indices)


class TimmBackbone(Backbone):
    def __init__(self, model: nn.Module, name: str, out_indices: list[int] | None = None):
        super().__init__()
        self.name = f"timm:{name}"
        info = getattr(model, "feature_info", None)
        if not info or not hasattr(model, "forward_intermediates"):
            raise ConfigError(f"timm model '{name}' has no feature interface (feature_info and "
                              "forward_intermediates), so its stage features cannot be read. Pick another model.")
        levels = list(range(len(info))) if out_indices is None else list(out_indices)
        if not levels or levels != sorted(set(levels)) or not all(0 <= i < len(info) for i in levels):
            raise ConfigError(f"out_indices {out_indices} for timm:{name} must be increasing feature levels in "
                              f"0..{len(info) - 1} (its feature_info has {len(info)} levels).")
        self.model = model
        self.levels = levels
        self.stage_channels = [info[i]["num_chs"] for i in levels]
        self.stage_reductions = [info[i]["reduction"] for i in levels]
        self.head_reads_last = levels[-1] == len(info) - 1 and self._head_pools_maps()
        if self.head_reads_last:
            self.stage_channels[-1] = model.num_features

    @torch.no_grad()
    def _head_pools_maps(self) -> bool:
        """Whether the head maps an NCHW map of ``num_features`` channels to the embedding (probe on zeros)."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.forward_head(torch.zeros(2, self.model.num_features, 3, 5), pre_logits=True)
        except Exception:  # a head that pools tokens or NHWC maps fails on this input: not a map head
            return False
        finally:
            self.model.train(was_training)
        return tuple(out.shape) == (2, self.embed_dim)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def embed_dim(self) -> int:
        return getattr(self.model, "head_hidden_size", None) or self.model.num_features

    @property
    def fc(self) -> nn.Linear:
        head = self.model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise ConfigError(f"{self.name}'s classifier is a {type(head).__name__}, not a Linear layer, which "
                              "this method needs. Use a model whose head ends in a Linear classifier.")
        return head

    @property
    def stem(self) -> nn.Module:
        raise ConfigError(f"{self.name} exposes its stage features but not its stem/stages modules, which this "
                          "method needs. Use a built-in backbone (selfkd list models).")

    stages = stem

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        final, feats = self.model.forward_intermediates(x, indices=self.levels)
        if self.head_reads_last:
            feats[-1] = final
        return self.model.forward_head(final), feats

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward(x)[1]

    def embed(self, last: torch.Tensor) -> torch.Tensor:
        if not self.head_reads_last:
            raise ConfigError(f"The classifier of {self.name} does not read its last stage map (token/NHWC "
                              "features, or out_indices without the last level), so no embedding can be computed "
                              "from F_n. Use a convolutional model with all feature levels.")
        return self.model.forward_head(last, pre_logits=True)
