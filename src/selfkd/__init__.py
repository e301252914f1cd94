"""selfkd: self-knowledge distillation for image classification and semantic segmentation.

``create_model``, ``create_method`` and the ``list_*`` functions are imported on first use, so that ``import
selfkd`` (and the command line's ``--help``) does not import torch.
"""
from .version import __version__

__all__ = ["__version__", "create_model", "list_models", "create_method", "list_methods", "list_datasets"]


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from . import models

        return getattr(models, name)
    if name in ("create_method", "list_methods"):
        from . import methods

        return getattr(methods, name)
    if name == "list_datasets":
        from . import data

        return data.list_datasets
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
