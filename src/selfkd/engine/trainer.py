"""The training loop. It knows nothing about any particular method: it builds the data a method
declares it needs, calls the method, back-propagates ``loss`` and logs every named term.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import Config, build_config
from ..data.datasets import load_dataset
from ..data.pipeline import build_test_loader, build_train_loader
from ..errors import ConfigError, SelfKDError, TrainingError
from ..methods import Method, create_method, per_sample_args
from ..metrics import EvalStats
from ..runfolder import CHECKPOINT, CONFIG, RELIABILITY, SUMMARY, WEIGHTS
from ..models import create_model
from . import distributed as dist_utils
from ..atomic import atomic_write
from ..comm import all_gather_cat, all_reduce_sum
from ..weights import save_weights
from .checkpoint import load_run_checkpoint, save_checkpoint
from .logger import RunLogger, use_progress_bar
from .schedule import lr_factor
from .step import TrainStep, autocast, build_optimizer, configure_backends



class Interrupted(SelfKDError):
    exit_code = 130


@contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints and stops. A second Ctrl-C aborts."""
    flag = {"stop": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    configure_backends(deterministic)


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool, main: bool) -> Path:
    path = cfg.run_path
    occupied = (path / CONFIG).exists() or (path / CHECKPOINT).exists()
    if occupied and not resume:
        if not overwrite:
            raise ConfigError(
                f"Run folder {path} already holds a run. Resume it with `selfkd train --resume {path}`, "
                "start over with --overwrite, or choose another --run-dir (or name)."
            )
        if main:
            shutil.rmtree(path)
    return path


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False):
        self.dist, self.device = dist_utils.init_distributed(cfg.train.device)
        self.cfg = cfg
        self.run_dir = prepare_run_dir(cfg, resume, overwrite, self.dist.main)
        dist_utils.barrier()
        seed_everything(cfg.seed + self.dist.rank, cfg.train.deterministic)
        t = cfg.train

        self.splits = load_dataset(cfg.data.dataset, cfg.data.data_dir, **cfg.data.options)
        self.method = build_method(cfg, self.splits)
        if t.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise ConfigError("train.sync_bn needs GPUs (PyTorch's SyncBatchNorm does not run on CPU); "
                                  "turn it off for CPU runs.")
            self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self.method.to(self.device)
        channels_last = self.device.type == "cuda" if t.channels_last == "auto" else t.channels_last
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        d = self.dist
        self.train_loader = build_train_loader(self.splits, cfg.data, self.method.data_needs, self.device,
                                               cfg.seed, d.rank, d.world)
        self.test_loader = build_test_loader(self.splits, cfg.data, self.device, cfg.seed, d.rank, d.world)

        o = cfg.optim
        lr = o.lr * (cfg.data.batch_size / o.lr_reference_batch if o.lr_reference_batch else 1.0)
        self.optimizer = build_optimizer(self.method, lr, o.momentum, o.nesterov, o.weight_decay,
                                         o.no_decay_norm_bias, self.device)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        compile_mode = t.compile
        if compile_mode == "auto":  # CUDA graphs on one GPU; plain compilation under DDP, whose all-reduce
            # hooks fire during backward and have not been validated inside captured graphs; off on CPU
            compile_mode = "off" if self.device.type != "cuda" else "default" if self.dist.enabled else "reduce-overhead"
        self.step = TrainStep(self.method, self.optimizer, self.device, t.amp, compile_mode, t.grad_clip,
                              t.nonfinite == "skip", ddp=self.dist.enabled)
        try:
            self.logger = RunLogger(self.run_dir, self.dist.main)
        except OSError as err:
            raise ConfigError(f"Cannot create the run folder {self.run_dir} ({err.strerror or err}). "
                              "Choose a writable --run-dir.") from None
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best: dict | None = None
        self.train_time = 0.0
        self.images_seen = 0
        self.resumed_window: dict | None = None  # statistics of a partly trained epoch, from the checkpoint
        self.reliability: dict | None = None  # of the last evaluation, for reliability diagrams
        if resume:
            self._restore()
        elif self.dist.main:
            atomic_write(self.run_dir / CONFIG, lambda tmp: tmp.write_text(_yaml(cfg.to_dict())))

    # ------------------------------------------------------------------ state

    def _payload(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "method": self.cfg.method.name, "model": self.cfg.model.name,
            "num_classes": self.splits.num_classes,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "method_state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.step.scaler.state_dict() if self.step.scaler else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "best": self.best, "train_time": self.train_time, "images_seen": self.images_seen,
            "window": self.step.window_state() if self.step_in_epoch else None,
        }

    def save(self) -> None:
        if self.dist.main:
            save_checkpoint(self.run_dir / CHECKPOINT, self._payload())
        dist_utils.barrier()

    def _restore(self) -> None:
        path = self.run_dir / CHECKPOINT
        ckpt = load_run_checkpoint(path, self.method, self.cfg.method.name, self.cfg.model.name,
                                   self.splits.num_classes)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ConfigError(
                f"{path} does not fit this run's model or method options ({str(err).splitlines()[0][:300]}). "
                "Resume with the options the run was started with."
            ) from None
        if self.step.scaler and ckpt.get("scaler"):
            self.step.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if self.device.type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.global_step = ckpt["global_step"]
        self.best, self.train_time = ckpt.get("best"), ckpt.get("train_time", 0.0)
        self.images_seen = ckpt.get("images_seen", 0)
        self.resumed_window = ckpt.get("window")
        self.logger.print(f"Resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}.")

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict:
        t = self.cfg.train
        self.logger.print(f"selfkd {__version__}: {self.cfg.method.name} on {self.cfg.model.name}, "
                          f"{self.cfg.data.dataset} ({len(self.train_loader)} steps/epoch), device {self.device}, "
                          f"run folder {self.run_dir}")
        with stop_on_signals() as signal_flag:
            while self.epoch < t.epochs:
                self._train_epoch(signal_flag)
                row = {"epoch": self.epoch + 1, **self.epoch_stats}
                if (self.epoch + 1) % t.eval_every == 0 or self.epoch + 1 == t.epochs:
                    test = self.evaluate()
                    self.reliability = test.pop("reliability")
                    row.update({f"test/{k}": v for k, v in test.items() if k != "n"})
                    if self.best is None or test["top1"] > self.best["top1"]:
                        self.best = {"epoch": self.epoch + 1, "top1": test["top1"]}
                self.epoch += 1
                self.step_in_epoch = 0
                self.logger.log_epoch(row, self.global_step)
                self.logger.print(_epoch_line(row, t.epochs))
                self.save()
        return self.finish()

    def _train_epoch(self, signal_flag) -> None:
        t = self.cfg.train
        self.method.train()
        if self.step_in_epoch == 0:  # resuming mid-epoch: the method's state comes from the checkpoint
            self.method.on_epoch_start(self.epoch, t.epochs)
        self.train_loader.set_epoch(self.epoch)
        steps = len(self.train_loader)
        self.step.reset()
        if self.resumed_window:  # resuming mid-epoch: keep the epoch's statistics so far
            self.step.load_window_state(self.resumed_window)
            self.resumed_window = None
        window_start = self.global_step
        bar = None
        if use_progress_bar(t.progress) and self.dist.main:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}",
                       leave=False, dynamic_ncols=True)
        started, seen_before = time.perf_counter(), self.step.seen
        try:
            for batch in self.train_loader.iter_from(self.step_in_epoch):
                factor = lr_factor(self.cfg.schedule, self.global_step, steps, t.epochs)
                for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                    group["lr"] = base * factor
                self.step(batch.images, batch.targets, batch.index)
                self.global_step += 1
                self.step_in_epoch += 1
                if self.step_in_epoch % t.log_every == 0 or self.step_in_epoch == steps:
                    self._check_finite(window_start)
                    stats = self.step.summary()  # running means over the epoch so far
                    self.logger.log_steps({"step/loss": stats.get("train/loss", math.nan),
                                           "step/lr": self.optimizer.param_groups[0]["lr"]}, self.global_step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{stats.get('train/loss', math.nan):.3f}",
                                        acc=f"{stats.get('train/top1', 0):.1f}")
                if bar is not None:
                    bar.update(1)
                if self._stop_requested(signal_flag):
                    self._check_finite(window_start)
                    self._account(started, seen_before)
                    self.save()
                    raise Interrupted(
                        f"Stopped by {signal_flag['stop'] or 'a signal'} at epoch {self.epoch + 1}, step "
                        f"{self.step_in_epoch}; checkpoint saved in {self.run_dir / CHECKPOINT}. Continue with "
                        f"`selfkd train --resume {self.run_dir}`."
                    )
        finally:
            if bar is not None:
                bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed, seen = self._account(started, seen_before)
        self._check_finite(window_start)
        self.epoch_stats = {**self.step.summary(), "lr": self.optimizer.param_groups[0]["lr"],
                            "time/epoch_s": elapsed, "time/img_per_s": seen * self.dist.world / max(elapsed, 1e-9)}

    def _account(self, started: float, seen_before: int) -> tuple[float, int]:
        """Add the time and images since ``started`` to the run's totals; returns them (images on this rank:
        primary images, i.e. anchors and first views, as an epoch counts them)."""
        elapsed, seen = time.perf_counter() - started, self.step.seen - seen_before
        self.train_time += elapsed
        self.images_seen += seen * self.dist.world
        return elapsed, seen

    def _stop_requested(self, signal_flag) -> bool:
        if not self.dist.enabled:
            return signal_flag["stop"] is not None
        if self.step_in_epoch % self.cfg.train.log_every:
            return False
        # Every rank must stop at the same step: agree every log_every steps.
        stop = torch.tensor([1.0 if signal_flag["stop"] else 0.0], device=self.device)
        return bool(all_reduce_sum(stop).item())

    def _check_finite(self, window_start: int) -> None:
        bad = self.step.nonfinite()
        if bad is None:
            return
        step, terms = bad
        raise TrainingError(
            f"Non-finite loss ({', '.join(terms)}) at training step {window_start + step + 1} "
            f"(epoch {self.epoch + 1}). Stopped without overwriting the last good checkpoint in {self.run_dir}. "
            "Lower the learning rate, enable train.grad_clip, use --set train.amp=off, or set "
            "train.nonfinite=skip to skip such steps."
        )

    def evaluate(self) -> dict:
        return evaluate(self.method, self.test_loader, self.device, self.step.dtype)

    def finish(self) -> dict:
        final = self.logger.rows[-1] if self.logger.rows else {}
        summary = {
            "selfkd_version": __version__,
            "name": self.cfg.run_name, "method": self.cfg.method.name, "model": self.cfg.model.name,
            "dataset": self.cfg.data.dataset, "seed": self.cfg.seed, "epochs": self.cfg.train.epochs,
            "final": {k[len("test/"):]: v for k, v in final.items() if k.startswith("test/")},
            "best_on_test": dict(self.best or {}, note="selected on the test set; report 'final' instead"),
            "train_time_s": self.train_time,
            "img_per_s": self.images_seen / self.train_time if self.train_time else None,
            "params": sum(p.numel() for p in self.method.deployable().parameters()),
            "extra_params": self.method.extra_parameters(),
            "device": str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "world_size": self.dist.world,
        }
        if self.dist.main:
            d = self.cfg.data
            meta = {"model": self.cfg.model.name, "num_classes": self.splits.num_classes,
                    "in_channels": self.splits.in_channels, "model_options": self.cfg.model.options(),
                    "method": self.cfg.method.name, "selfkd_version": __version__,
                    "image_size": d.image_size or self.splits.image_size,  # what a deployer must feed it
                    "mean": list(d.mean or self.splits.mean), "std": list(d.std or self.splits.std),
                    "classes": list(self.splits.classes)}
            save_weights(self.run_dir / WEIGHTS, self.method.deployable(), meta)
            if self.reliability:
                atomic_write(self.run_dir / RELIABILITY, lambda tmp: tmp.write_text(json.dumps(self.reliability)))
            atomic_write(self.run_dir / SUMMARY, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
        self.logger.close()
        return summary


def build_method(cfg: Config, splits) -> Method:
    """The run's model and method, as ``cfg`` describes them, for ``splits`` (per-sample methods get the number
    of training images the run uses)."""
    model = create_model(cfg.model.name, num_classes=splits.num_classes, in_channels=splits.in_channels,
                         **cfg.model.options())
    num_train = min(len(splits.train), cfg.data.train_subset or len(splits.train))
    return create_method(cfg.method.name, model, num_classes=splits.num_classes, **cfg.method.options(),
                         **per_sample_args(cfg.method.name, num_train))


def evaluate(module: torch.nn.Module, loader, device: torch.device, dtype: torch.dtype | None) -> dict:
    """Top-1/5, NLL, ECE and AURC of ``module`` (a method, or a backbone returning ``(logits, features)``) in
    eval mode over ``loader``, summed over ranks, with the reliability-diagram bins under ``reliability``."""
    was_training = module.training
    module.eval()
    stats = EvalStats(device)
    with torch.no_grad(), autocast(device, dtype):
        for batch in loader:
            out = module(batch.images)
            stats.update(out[0] if isinstance(out, tuple) else out, batch.targets)
    all_reduce_sum(stats.sums)
    all_reduce_sum(stats.bins)
    if stats.confidence:
        stats.confidence = [all_gather_cat(torch.cat(stats.confidence))]
        stats.correct = [all_gather_cat(torch.cat(stats.correct))]
    module.train(was_training)
    return {**stats.result(), "reliability": stats.reliability()}


def _epoch_line(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row.get('train/loss', math.nan):.4f}",
             f"train {row.get('train/top1', math.nan):.2f}%"]
    if "test/top1" in row:
        parts += [f"test {row['test/top1']:.2f}%", f"nll {row['test/nll']:.3f}", f"ece {row['test/ece']:.2f}"]
    parts.append(f"{row.get('time/img_per_s', 0):.0f} img/s")
    return "  ".join(parts)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def train(cfg: Config | dict, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one run and return its summary (the Python API behind ``selfkd train``)."""
    if isinstance(cfg, dict):
        cfg = build_config(cfg)
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and (cfg.run_path / CHECKPOINT).exists():
        resume, overwrite = True, False  # torchrun restarted the workers: continue from the last checkpoint
    try:
        trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
        try:
            return trainer.fit()
        finally:
            trainer.logger.close()
    finally:
        dist_utils.shutdown()
