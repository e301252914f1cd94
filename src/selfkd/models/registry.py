"""Create backbones by name: ``create_model("cifar_resnet18", num_classes=100)``."""
from __future__ import annotations

from ..registry import Registry, checked_call
from ..tasks import DEFAULT_TASK
from .base import Backbone

MODELS: Registry = Registry("model")
MODEL_TASKS: dict[str, str] = {}  # model name -> task (selfkd.tasks.TASKS)
MODEL_WEIGHTS: dict[str, tuple] = {}  # model name -> the torchvision networks it takes weights of (pretrained.Network)


def register_model(name: str | None = None, task: str = DEFAULT_TASK, weights: tuple = ()):
    """Register a model factory; ``task``: classification backbones or segmentation segmenters; ``weights``: the
    torchvision networks whose published weights it can start from (:class:`selfkd.models.pretrained.Network`, the
    first one for ``model.pretrained: imagenet``), none for networks without public weights."""
    def add(factory):
        MODELS.register(name)(factory)
        MODEL_TASKS[name or factory.__name__] = task
        MODEL_WEIGHTS[name or factory.__name__] = tuple(weights)
        return factory

    return add


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> Backbone:
    """Build a registered backbone, or any timm model as ``timm:<name>``."""
    if name.startswith("timm:"):
        from .timm_backbone import create_timm_backbone

        return create_timm_backbone(name[len("timm:"):], num_classes, in_channels, **kwargs)
    factory = MODELS.get(name)
    return checked_call(factory, "model", name, dict(kwargs, num_classes=num_classes, in_channels=in_channels))


def list_models(task: str = DEFAULT_TASK) -> list[str]:
    return [name for name in MODELS.names() if MODEL_TASKS[name] == task]


def count_parameters(name: str, num_classes: int) -> int:
    """Parameters of a registered model with its defaults and ``num_classes`` outputs, counted on the meta device
    (nothing is allocated)."""
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, num_classes=num_classes).parameters())
