"""The tasks selfkd trains for, as data: what differs between classifying images and segmenting them.

Each :class:`Task` declares its metrics, its headline metric and training statistic, the target value left out
of losses and metrics, the augmentations its data take, what a run of it keeps besides the usual files, its report
sections, and its demo and benchmark settings. The data pipeline, the engine, the report and the commands look
these up instead of testing a task's name; adding a task is one entry in :data:`TASKS` plus its dataset readers,
its models and its methods. Nothing here imports torch (the command line reads it to parse its flags).
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE_LABEL = 255  # the target value of unlabelled pixels: left out of every loss, training statistic and metric
DEFAULT_TASK = "classification"  # of a model or dataset registered without one, and of run folders that predate tasks


@dataclass(frozen=True)
class Demo:
    """``selfkd demo --task NAME``: its methods, its recipes in ``configs/demo/`` by setting (cpu, gpu), the run
    folder ``runs/<folder>_<setting>``, what its regime line calls the dataset, and the paper run the regime line
    compares with (None: not compared)."""

    methods: tuple[str, ...]
    recipes: dict[str, str]
    folder: str
    data_names: dict[str, str]
    paper_run: dict | None = None


@dataclass(frozen=True)
class Bench:
    """``selfkd bench --task NAME``: the generated dataset it times on and the defaults of its flags."""

    dataset: str
    methods: str
    model: str
    batch_size: int
    num_classes: int
    image_size: int
    gpu_train_size: int | None  # images generated on a GPU (enough for real epochs); None: as many as timed


@dataclass(frozen=True)
class Task:
    name: str
    model_kind: str  # what messages call its models
    metric_names: tuple[str, ...]  # classes of selfkd.metrics (metrics.task_metrics), in report order
    primary: str  # the headline metric: best epoch, gain over ce, the report's first column
    train_accuracy: str  # the training statistic of the per-epoch rows (train/<name>)
    ignore_index: int | None  # targets left out of losses, statistics and metrics (None: every target counts)
    dense: bool  # one target per pixel (masks): evaluated at each image's size, never paired by class
    augments: dict[bool, tuple[str, ...]]  # data held in memory (True) or read from files (False) -> data.augment
    examples: bool  # a run keeps test predictions (examples.npz) for the report's figure
    report_sections: tuple[str, ...]  # beyond the table and curves: "class_iou" tables, the "examples" figure
    listed_classes: int  # the class count `selfkd list models` counts parameters at
    demo: Demo
    bench: Bench


TASKS: dict[str, Task] = {
    "classification": Task(
        name="classification", model_kind="a classification backbone",
        metric_names=("Accuracy", "NLL", "Calibration", "AURC"), primary="top1", train_accuracy="top1",
        ignore_index=None, dense=False,
        augments={True: ("crop_flip", "rrc_flip", "flip", "none"), False: ("crop_flip", "rrc_flip", "flip", "none")},
        examples=False, report_sections=(), listed_classes=100,
        demo=Demo(("ce", "lightskd", "frskd", "cskd"), {"cpu": "fashion_mnist.yaml", "gpu": "fashion_mnist_gpu.yaml"},
                  "demo", {"fashion_mnist": "Fashion-MNIST"},
                  {"dataset": "CIFAR-100", "images": 50_000, "epochs": 200, "model": "cifar_resnet18", "width": 64}),
        bench=Bench("synthetic", "ce,dsr,drg,lightskd,frskd", "cifar_resnet18", 128, 100, 32, 50_000)),
    "segmentation": Task(
        name="segmentation", model_kind="a segmenter",
        metric_names=("Segmentation", "PixelCalibration"), primary="miou", train_accuracy="pixel_acc",
        ignore_index=IGNORE_LABEL, dense=True,
        augments={True: ("seg_scale_crop_flip", "none"), False: ("seg_voc", "none")},
        examples=True, report_sections=("class_iou", "examples"), listed_classes=21,
        demo=Demo(("ce", "frskd"), {"cpu": "fmnist_scenes.yaml", "gpu": "fmnist_scenes_gpu.yaml"},
                  "demo_segmentation", {"fmnist_scenes": "Fashion-MNIST scenes (segmentation)"}),
        bench=Bench("synthetic_seg", "ce,frskd", "frskd_seg_effb0", 16, 21, 512, None)),
}
TASK_NAMES = tuple(TASKS)
