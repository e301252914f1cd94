"""The data layer: dataset readers, loaders on the training device, augmentation and samplers. It knows nothing of
methods or models.

Every module of this package is imported with it, so a reader module registers its datasets by being here (the
rule of the models and methods packages too)."""
import importlib
import pkgutil

from .datasets import DATASETS, DatasetSplits, ImageFiles, ImageTensors, list_datasets, load_dataset, register_dataset
from .loaders import Batch
from .needs import DataNeeds
from .pipeline import build_test_loader, build_train_loader, build_val_loader
from .settings import DataConfig

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DATASETS", "DatasetSplits", "ImageFiles", "ImageTensors", "list_datasets", "load_dataset",
           "register_dataset", "Batch", "DataNeeds", "DataConfig", "build_test_loader", "build_train_loader",
           "build_val_loader"]
