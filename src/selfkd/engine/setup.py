"""From a config to the parts of a run: the method on its device, the optimizer, the training step and the
loaders. One builder serves ``selfkd train``, ``selfkd eval --run`` and ``selfkd bench``, so the benchmark
measures exactly what training runs (learning-rate scaling, SyncBN, channels_last, compilation included).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config
from ..data import DatasetSplits, build_test_loader, build_train_loader, build_val_loader
from ..data.datasets import dataset_task
from ..data.holdout import training_size
from ..data.settings import resolve_data
from ..errors import ConfigError, short
from ..methods import Method, create_method, data_args
from ..methods.registry import DATA_ARGS
from ..models import create_model
from ..models.pretrained import LoadReport, load_pretrained, loaded_norms
from ..models.registry import MODEL_TASKS, MODELS
from ..tasks import DEFAULT_TASK, TASKS
from .distributed import Dist
from .step import TrainStep, build_optimizer


@dataclass
class RunParts:
    cfg: Config  # with every ``auto`` setting resolved for the device
    method: Method
    optimizer: torch.optim.Optimizer
    step: TrainStep
    train_loader: object
    test_loader: object
    val_loader: object | None  # None without data.val_split
    pretrained: LoadReport | None = None  # what the model started from (model.pretrained)


def run_task(cfg: Config) -> str:
    """The run's task: the dataset's, which ``task`` in the config may state but not contradict."""
    task = dataset_task(cfg.data.dataset)
    if cfg.task not in ("auto", task):
        raise ConfigError(f"task: {cfg.task} does not fit dataset '{cfg.data.dataset}', whose labels are for "
                          f"{task}. Remove the task key or choose a {cfg.task} dataset (selfkd list datasets).")
    return task


def build_model(cfg: Config, splits: DatasetSplits) -> torch.nn.Module:
    """The run's model as ``cfg`` describes it, randomly initialised. A model of another task than the dataset's is
    refused."""
    task = run_task(cfg)
    if not cfg.model.name.startswith("timm:"):
        MODELS.get(cfg.model.name)  # an unknown name is refused as such ("did you mean")
    model_task = MODEL_TASKS.get(cfg.model.name, DEFAULT_TASK)  # timm:<name> models classify
    if model_task != task:
        raise ConfigError(f"Model {short(cfg.model.name)} is {TASKS[model_task].model_kind}, but dataset "
                          f"'{cfg.data.dataset}' is for {task}, which needs {TASKS[task].model_kind}. Choose one with "
                          f"`selfkd list models --task {task}`.")
    return create_model(cfg.model.name, num_classes=splits.num_classes, in_channels=splits.in_channels,
                        **cfg.model.options())


def build_method(cfg: Config, splits: DatasetSplits, model: torch.nn.Module | None = None) -> Method:
    """The run's method on ``model`` (default: :func:`build_model`'s), as ``cfg`` describes it, for ``splits``
    (per-sample methods get the number of training images the run uses: the training set without its validation
    split, then its subset)."""
    model = build_model(cfg, splits) if model is None else model
    num_train = training_size(splits, cfg.data)
    options = cfg.method.options()
    given = [key for key in DATA_ARGS if key in options]
    if given:
        raise ConfigError(f"method.{given[0]} comes from the dataset ({cfg.data.dataset}), not from the config; remove "
                          f"it from the method's section.")
    return create_method(cfg.method.name, model, num_classes=splits.num_classes, **options,
                         **data_args(cfg.method.name, num_train, run_task(cfg)))


def start_weights(cfg: Config, model: torch.nn.Module, resumed: LoadReport | None = None) -> LoadReport | None:
    """Load ``model.pretrained`` into ``model`` for a new run; a resume passes the report its run kept instead (the
    checkpoint holds the weights, which must not be replaced), for the parameters and preprocessing it names."""
    m, scale = cfg.model, cfg.optim.pretrained_lr_scale
    if not m.pretrained:
        asked = [key for key, on in (("model.freeze_bn", m.freeze_bn), (f"optim.pretrained_lr_scale={scale}",
                                                                        scale != 1)) if on]
        if asked:
            raise ConfigError(f"{' and '.join(asked)} act on the parameters that came from pretrained weights, but "
                              "model.pretrained is not set. Set it (e.g. model.pretrained: imagenet) or remove them.")
        return None
    if resumed is None:
        return load_pretrained(model, m.pretrained)
    if (resumed.source, resumed.model) != (m.pretrained, m.name):
        raise ConfigError(f"The run started {resumed.model} from model.pretrained: {resumed.source}, and this resume "
                          f"asks for {m.name} from {m.pretrained}: a resume continues the trained weights. Leave "
                          "model.name and model.pretrained as the run had them.")
    return resumed


def build_run(cfg: Config, splits: DatasetSplits, device: torch.device, dist: Dist | None = None,
              resumed: LoadReport | None = None) -> RunParts:
    """Everything a training loop needs, on ``device``, for this process of ``dist``; ``parts.cfg`` is ``cfg`` with
    every ``auto`` setting and every dataset default decided (the pretrained weights' preprocessing first, where the
    config leaves it). ``resumed``: the pretrained weights' report of a run that resumes (see :func:`start_weights`)."""
    dist = dist or Dist()
    if cfg.train.select == "best_val" and cfg.data.val_split is None:
        raise ConfigError("train.select=best_val exports and tests the weights of the epoch with the best validation "
                          "metric, but this run has no validation split. Hold one out of the training set with "
                          "data.val_split (a count such as 5000, a fraction such as 0.1, or dataset for the dataset's "
                          "own), or keep train.select=last.")
    cfg = cfg.resolved(device.type, dist.enabled)
    model = build_model(cfg, splits)
    report = start_weights(cfg, model, resumed)
    cfg = cfg.model_copy(update={"data": resolve_data(cfg.data, splits, report and report.preprocessing)})
    t, o = cfg.train, cfg.optim
    method = build_method(cfg, splits, model)
    if cfg.model.freeze_bn:
        method.freeze_norms(loaded_norms(model, report))
    if t.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm does not run on CPU); "
                              "turn it off for CPU runs.")
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    layout = torch.channels_last if t.channels_last else torch.contiguous_format  # the model's, and its batches'
    method.to(device)
    if t.channels_last:
        method.to(memory_format=layout)
    train_loader = build_train_loader(splits, cfg.data, method.data_needs, device, cfg.seed, dist.rank, dist.world,
                                      layout)
    test_loader = build_test_loader(splits, cfg.data, device, cfg.seed, dist.rank, dist.world, layout)
    val_loader = build_val_loader(splits, cfg.data, device, cfg.seed, dist.rank, dist.world, layout)
    lr = o.lr * (cfg.data.batch_size / o.lr_reference_batch if o.lr_reference_batch else 1.0)
    pretrained = frozenset(f"backbone.{key}" for key in (report.loaded if report else ()))
    optimizer = build_optimizer(method, lr, o.momentum, o.nesterov, o.weight_decay, o.no_decay_norm_bias, device,
                                pretrained, o.pretrained_lr_scale)
    step = TrainStep(method, optimizer, device, t.amp, t.compile, t.grad_clip, t.nonfinite == "skip",
                     ignore_index=TASKS[method.task].ignore_index, accumulate=t.accumulate_steps,
                     clip_mode=t.grad_clip_mode)  # wrapped in DDP by the trainer (TrainStep.distribute)
    return RunParts(cfg, method, optimizer, step, train_loader, test_loader, val_loader, report)
