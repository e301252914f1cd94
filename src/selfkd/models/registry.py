"""Create backbones by name: ``create_model("cifar_resnet18", num_classes=100)``."""
from __future__ import annotations

from ..registry import Registry, checked_call
from .base import Backbone

MODELS: Registry = Registry("model")
MODEL_TASKS: dict[str, str] = {}  # model name -> task (selfkd.registry.TASK_NAMES)


def register_model(name: str | None = None, task: str = "classification"):
    """Register a model factory; ``task``: classification backbones or segmentation segmenters."""
    def add(factory):
        MODELS.register(name)(factory)
        MODEL_TASKS[name or factory.__name__] = task
        return factory

    return add


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> Backbone:
    """Build a registered backbone, or any timm model as ``timm:<name>``."""
    if name.startswith("timm:"):
        from .timm_backbone import create_timm_backbone

        return create_timm_backbone(name[len("timm:"):], num_classes, in_channels, **kwargs)
    factory = MODELS.get(name)
    return checked_call(factory, "model", name, dict(kwargs, num_classes=num_classes, in_channels=in_channels))


def list_models(task: str = "classification") -> list[str]:
    return [name for name in MODELS.names() if MODEL_TASKS[name] == task]
