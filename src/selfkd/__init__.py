"""selfkd: self-knowledge distillation for image classifiers."""
__version__ = "0.1.0"

from .models import create_model, list_models
from .methods import create_method, list_methods
from .data import list_datasets

__all__ = ["__version__", "create_model", "list_models", "create_method", "list_methods", "list_datasets"]
