import importlib
import pkgutil

from .base import Backbone
from .registry import MODELS, count_parameters, create_model, list_models, register_model

# Every module of this package registers its models on import (timm_backbone only on demand).
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "registry", "timm_backbone"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Backbone", "MODELS", "count_parameters", "create_model", "list_models", "register_model"]
