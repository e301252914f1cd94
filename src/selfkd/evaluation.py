"""Evaluate a finished run or an exported weights file (``selfkd eval``)."""
from __future__ import annotations

from pathlib import Path

from .config import build_config, read_yaml
from .data import build_test_loader, load_dataset
from .engine.checkpoint import load_run_checkpoint
from .weights import load_backbone
from .engine.distributed import resolve_device
from .engine.step import amp_dtype
from .engine.trainer import build_method, evaluate
from .runfolder import CHECKPOINT, CONFIG


def evaluate_run(run_dir, device: str = "auto", data_dir: str | None = None, batch_size: int | None = None) -> dict:
    """Rebuild the run's method from its config, load ``last.pt`` and evaluate it as trained."""
    run_dir = Path(run_dir)
    cfg = build_config(read_yaml(run_dir / CONFIG), str(run_dir / CONFIG))
    dev = resolve_device(device)
    data = cfg.data.model_copy(update={k: v for k, v in {"data_dir": data_dir, "eval_batch_size": batch_size}.items() if v})
    splits = load_dataset(data.dataset, data.data_dir, **data.options)
    method = build_method(cfg, splits)
    ckpt = load_run_checkpoint(run_dir / CHECKPOINT, method, cfg.method.name, cfg.model.name, splits.num_classes)
    loader = build_test_loader(splits, data, dev, cfg.seed)
    result = _metrics(method.to(dev), loader, dev, amp_dtype(cfg.train.amp, dev))  # in the precision it trained in
    return {"run": str(run_dir), "dataset": data.dataset, "epoch": ckpt["epoch"], **result}


def evaluate_weights(weights, dataset: str, model: str | None = None, device: str = "auto",
                     data_dir: str | None = None, batch_size: int | None = None) -> dict:
    """Evaluate an exported ``model.safetensors`` (the deployable backbone) on a dataset's test split."""
    from .config import DataConfig

    dev = resolve_device(device)
    data = DataConfig(dataset=dataset, data_dir=data_dir, eval_batch_size=batch_size or 500)
    splits = load_dataset(dataset, data_dir)
    net, meta = load_backbone(weights, model, splits.num_classes, splits.in_channels)
    result = _metrics(net.to(dev), build_test_loader(splits, data, dev), dev, amp_dtype("auto", dev))
    return {"weights": str(weights), "model": meta["model"], "dataset": dataset, **result}


def _metrics(module, loader, device, dtype) -> dict:
    """The training run's evaluation, without the reliability-diagram bins."""
    result = evaluate(module, loader, device, dtype)
    del result["reliability"]
    return result
