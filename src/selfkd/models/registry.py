"""Create backbones by name: ``create_model("cifar_resnet18", num_classes=100)``."""
from __future__ import annotations

from ..registry import Registry, checked_call
from .base import Backbone

MODELS: Registry = Registry("model")
register_model = MODELS.register


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> Backbone:
    """Build a registered backbone, or any timm model as ``timm:<name>``."""
    if name.startswith("timm:"):
        from .timm_backbone import create_timm_backbone

        return create_timm_backbone(name[len("timm:"):], num_classes, in_channels, **kwargs)
    factory = MODELS.get(name)
    return checked_call(factory, "model", name, dict(kwargs, num_classes=num_classes, in_channels=in_channels))


def list_models() -> list[str]:
    return MODELS.names()
