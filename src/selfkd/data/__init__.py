from .datasets import DATASETS, DatasetSplits, ImageFiles, ImageTensors, list_datasets, load_dataset, register_dataset
from . import folders, segmentation  # noqa: F401  (register the image-folder and segmentation datasets)
from .loaders import Batch
from .needs import DataNeeds
from .pipeline import build_test_loader, build_train_loader
from .settings import DataConfig

__all__ = ["DATASETS", "DatasetSplits", "ImageFiles", "ImageTensors", "list_datasets", "load_dataset",
           "register_dataset", "Batch", "DataNeeds", "DataConfig", "build_test_loader", "build_train_loader"]
