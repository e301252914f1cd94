import importlib
import pkgutil

from ..data.needs import DataNeeds
from .base import Method, MethodOutput
from .registry import METHODS, create_method, data_args, list_methods, method_class, model_task, register_method

# Every module of this package registers its methods on import.
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "registry", "parts"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DataNeeds", "Method", "MethodOutput", "METHODS", "create_method", "list_methods", "method_class",
           "model_task", "data_args", "register_method"]
