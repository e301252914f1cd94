"""Evaluate a run or an exported weights file (``selfkd eval``) with the same loop and metrics as training."""
from __future__ import annotations

from pathlib import Path

from .config import DataConfig, build_config, read_yaml
from .data import build_test_loader, load_dataset
from .engine.checkpoint import load_run_checkpoint
from .engine.distributed import resolve_device
from .engine.setup import build_method
from .engine.step import amp_dtype
from .engine.trainer import evaluate
from .metrics import Evaluation
from .errors import ConfigError
from .runfolder import CHECKPOINT, CONFIG, WEIGHTS, check_run
from .weights import load_eval_model


def evaluate_run(run_dir, device: str = "auto", data_dir: str | None = None, batch_size: int | None = None,
                 dataset: str | None = None, model: str | None = None) -> dict:
    """Rebuild the run's method from its config, load ``last.pt`` and evaluate its eval model as trained.
    ``dataset`` and ``model``, when given, must be the run's own (a run is evaluated as it was trained)."""
    run_dir = Path(run_dir)
    check_run(run_dir, "--run")
    cfg = build_config(read_yaml(run_dir / CONFIG), str(run_dir / CONFIG))
    given = {"--dataset": (dataset, cfg.data.dataset), "--model": (model, cfg.model.name)}
    clashes = [f"{flag} {mine} (the run's is {theirs})" for flag, (mine, theirs) in given.items()
               if mine and mine != theirs]
    if clashes:
        raise ConfigError(f"selfkd eval --run evaluates {run_dir} on its own dataset and model, but got "
                          f"{'; '.join(clashes)}. Leave them out, or evaluate its weights on another dataset with "
                          f"`selfkd eval --weights {run_dir / WEIGHTS} --dataset NAME`.")
    dev = resolve_device(device)
    data = cfg.data.model_copy(update={k: v for k, v in {"data_dir": data_dir, "eval_batch_size": batch_size}.items()
                                       if v is not None})
    splits = load_dataset(data.dataset, data.data_dir, **data.options)
    method = build_method(cfg, splits)
    ckpt = load_run_checkpoint(run_dir / CHECKPOINT, method, cfg.method.name, cfg.model.name, splits.num_classes)
    method.to(dev)
    loader = build_test_loader(splits, data, dev, cfg.seed)
    amp = cfg.resolved(dev.type, distributed=False).train.amp  # in the precision it trained in
    result = _metrics(method.eval_model(), loader, dev, amp, method.task, splits.num_classes)
    return {"run": str(run_dir), "dataset": data.dataset, "epoch": ckpt["epoch"], **result}


def evaluate_weights(weights, dataset: str, model: str | None = None, device: str = "auto",
                     data_dir: str | None = None, batch_size: int | None = None) -> dict:
    """Evaluate an exported ``model.safetensors`` (the module the run evaluated) on a dataset's test split."""
    dev = resolve_device(device)
    data = DataConfig(dataset=dataset, data_dir=data_dir, eval_batch_size=batch_size or 500)
    splits = load_dataset(dataset, data_dir)
    net, meta = load_eval_model(weights, model, splits.num_classes, splits.in_channels)
    task = getattr(net, "task", "classification")
    if task != splits.task:
        raise ConfigError(f"{weights} holds a {task} model ('{meta['model']}'), but dataset '{dataset}' is for "
                          f"{splits.task}. Evaluate it on a {task} dataset (`selfkd list datasets`).")
    result = _metrics(net.to(dev), build_test_loader(splits, data, dev), dev, "auto", meta.get("task", "classification"),
                      splits.num_classes)
    return {"weights": str(weights), "model": meta["model"], "dataset": dataset, **result}


def _metrics(module, loader, device, amp: str, task: str, num_classes: int) -> dict:
    return evaluate(module, loader, device, amp_dtype(amp, device), Evaluation(task, num_classes, device)).result()
