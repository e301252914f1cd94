"""Evaluation: the loop training and ``selfkd eval`` share, and rebuilding the module a run evaluated from its
weights file (``selfkd eval --weights``, ``selfkd export``)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import DataConfig, build_config, read_yaml
from ..data import build_test_loader, load_dataset
from ..data.datasets import dataset_task
from ..errors import CheckpointError, ConfigError, SelfKDError, short
from ..methods import create_method, data_args, model_task
from ..metrics import Evaluation
from ..models import create_model
from ..runfolder import CHECKPOINT, CONFIG, WEIGHTS, check_run
from ..tasks import DEFAULT_TASK
from ..weights import load_state, load_weights, read_metadata
from .checkpoint import load_run_checkpoint
from .distributed import resolve_device
from .setup import build_method
from .step import amp_dtype, autocast


def evaluate(module: torch.nn.Module, loader, device: torch.device, dtype: torch.dtype | None,
             evaluation: Evaluation) -> Evaluation:
    """Feed ``module`` (a method's eval model: a backbone returning ``(logits, features)``, or a method returning
    logits) in eval mode every batch of ``loader`` into ``evaluation``; returns it."""
    was_training = module.training
    module.eval()
    with torch.no_grad(), autocast(device, dtype):
        for batch in loader:
            out = module(batch.images)
            evaluation.update(out[0] if isinstance(out, tuple) else out, batch.targets)
    module.train(was_training)
    return evaluation


def rebuild_eval_model(path: Path, model: str | None = None, num_classes: int | None = None,
                       in_channels: int | None = None) -> tuple[torch.nn.Module, dict]:
    """``(module, metadata)``: the module a run evaluated, rebuilt from a weights file written by selfkd and in
    eval mode; ``module(images)`` returns the logits (a backbone returns ``(logits, features)``)."""
    state, meta = load_weights(path)
    spec = {"model": model or meta.get("model"), "num_classes": num_classes or meta.get("num_classes"),
            "in_channels": in_channels or meta.get("in_channels")}
    missing = [key for key, value in spec.items() if value is None]
    if missing:
        raise CheckpointError(f"{path} lacks the metadata {', '.join(missing)} that selfkd writes; use the "
                              "model.safetensors of a selfkd run (or name the model with --model).")
    net = create_model(spec["model"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                       **meta.get("model_options", {}))
    what = f"model '{spec['model']}' with {spec['num_classes']} classes"
    if meta.get("inference", "backbone") != "backbone":  # the whole method
        name, options = meta.get("method"), meta.get("method_options", {})
        try:
            net = create_method(name, net, **options, **data_args(name, 1, model_task(net)))
        except SelfKDError as err:
            raise CheckpointError(f"{path} names method {short(name)} with options {short(options)}, which cannot be "
                                  "rebuilt: "
                                  f"{err}") from None
        what = f"method '{name}' on {what}"
    load_state(path, net, state, what)
    return net.eval(), {**meta, **spec}


def evaluate_run(run_dir, device: str = "auto", data_dir: str | None = None, batch_size: int | None = None,
                 dataset: str | None = None, model: str | None = None) -> dict:
    """Rebuild the run's method from its config, load ``last.pt`` and evaluate the weights the run selects (the
    last epoch's, or under ``train.select: best_val`` the best validation epoch's so far) as trained (in the
    precision it trained in). ``dataset`` and ``model``, when given, must be the run's own (a run is evaluated as it
    was trained)."""
    run_dir = Path(run_dir)
    check_run(run_dir, "--run")
    cfg = build_config(read_yaml(run_dir / CONFIG), str(run_dir / CONFIG))
    given = {"--dataset": (dataset, cfg.data.dataset), "--model": (model, cfg.model.name)}
    clashes = [f"{flag} {short(mine, quoted=False)} (the run's is {theirs})" for flag, (mine, theirs) in given.items()
               if mine and mine != theirs]
    if clashes:
        raise ConfigError(f"selfkd eval --run evaluates {run_dir} on its own dataset and model, but got "
                          f"{'; '.join(clashes)}. Leave them out, or evaluate its weights on another dataset with "
                          f"`selfkd eval --weights {run_dir / WEIGHTS} --dataset NAME`.")
    dev = resolve_device(device)
    data = _data_config(cfg.data.model_dump(), data_dir=data_dir, eval_batch_size=batch_size)
    splits = load_dataset(data.dataset, data.data_dir, **data.options)
    method = build_method(cfg, splits)
    ckpt = load_run_checkpoint(run_dir / CHECKPOINT, method, cfg.method.name, cfg.model.name, splits.num_classes)
    epoch = ckpt["epoch"]
    if cfg.train.select == "best_val" and ckpt.get("best_state"):
        method.load_state_dict(ckpt["best_state"])
        epoch = ckpt["best_val"]["epoch"]
    method.to(dev)
    # The checkpoint's config is the run's resolved one: its amp is what the run decided on its own device, its
    # preprocessing what it trained with (a pretrained model's own, where the config left it).
    trained = build_config(ckpt["config"], f"the config in {run_dir / CHECKPOINT}")
    data = data.model_copy(update={key: getattr(trained.data, key) for key in ("image_size", "mean", "std")})
    loader = build_test_loader(splits, data, dev, cfg.seed)
    amp = trained.resolved(dev.type, distributed=False).train.amp
    result = _metrics(method.eval_model(), loader, dev, amp, method.task, splits)
    return {"run": str(run_dir), "dataset": data.dataset, "epoch": epoch, **result}


def evaluate_weights(weights, dataset: str, model: str | None = None, device: str = "auto",
                     data_dir: str | None = None, batch_size: int | None = None) -> dict:
    """Evaluate an exported ``model.safetensors`` (the module the run evaluated) on a dataset's test split, with the
    preprocessing and precision the run recorded in it (and its dataset options, on the run's dataset)."""
    dev = resolve_device(device)
    meta = read_metadata(weights)
    task, wanted = meta.get("task", DEFAULT_TASK), dataset_task(dataset)  # files before segmentation: no task
    if task != wanted:
        raise ConfigError(f"{weights} holds a {task} model ('{model or meta.get('model')}'), but dataset '{dataset}' "
                          f"is for {wanted}. Evaluate it on a {task} dataset (`selfkd list datasets`).")
    recorded = {key: meta.get(key) for key in ("image_size", "mean", "std", "eval_size", "test_resize")}
    options = meta.get("data_options") if dataset == meta.get("dataset") else None
    data = _data_config({"dataset": dataset, **recorded, "options": options or {}}, data_dir=data_dir,
                        eval_batch_size=batch_size)
    splits = load_dataset(dataset, data.data_dir, **data.options)
    net, meta = rebuild_eval_model(weights, model, splits.num_classes, splits.in_channels)
    amp = meta.get("amp") or build_config({}).resolved(dev.type, distributed=False).train.amp  # older files: auto
    result = _metrics(net.to(dev), build_test_loader(splits, data, dev), dev, amp, task, splits)
    return {"weights": str(weights), "model": meta["model"], "dataset": dataset, **result}


def _data_config(data: dict, **given) -> DataConfig:
    """The data section ``data`` with the command line's values (those given) set, validated like a run's."""
    given = {key: value for key, value in given.items() if value is not None}
    return build_config({"data": {**data, **given}}, "the command line").data


def _metrics(module, loader, device, amp: str, task: str, splits) -> dict:
    evaluation = Evaluation(task, splits.num_classes, device)
    return evaluate(module, loader, device, amp_dtype(amp), evaluation).result()
