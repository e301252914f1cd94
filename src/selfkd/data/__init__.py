from .datasets import DATASETS, DatasetSplits, ImageFiles, ImageTensors, list_datasets, load_dataset, register_dataset
from . import folders  # noqa: F401  (registers the image-folder datasets)
from .pipeline import Batch, build_test_loader, build_train_loader

__all__ = ["DATASETS", "DatasetSplits", "ImageFiles", "ImageTensors", "list_datasets", "load_dataset",
           "register_dataset", "Batch", "build_test_loader", "build_train_loader"]
