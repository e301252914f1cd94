"""The training loop. It knows nothing about any particular method: it builds the data a method
declares it needs, calls the method, back-propagates ``loss`` and logs every named term.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..atomic import atomic_write
from ..config import Config, build_config
from ..data.datasets import load_dataset
from ..data.resident import ResidentLoader
from ..errors import ConfigError, Interrupted, SelfKDError, TrainingError, first_line
from ..metrics import TASKS, Evaluation, columns
from ..threads import LoadWatch
from ..runfolder import (CHECKPOINT, CONFIG, EXAMPLES, SUMMARY, WEIGHTS, check_free, check_new, check_run,
                         next_step, open_run, release)
from ..weights import save_eval_model
from . import distributed as dist_utils
from .checkpoint import LOAD_ERRORS, does_not_fit, load_run_checkpoint, save_checkpoint
from .examples import write_examples
from .logger import RunLogger, use_progress_bar
from .schedule import lr_factor
from .setup import build_run
from .step import autocast, configure_backends


@contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set ``flag["stop"]`` (the signal's name); the loop finishes its step, checkpoints and stops. A
    second Ctrl-C aborts at once (KeyboardInterrupt: a file being written is abandoned, its previous version intact)
    while ``flag["abortable"]``; once the stop's checkpoint is saved there is nothing left to abort."""
    flag = {"stop": None, "abortable": True}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"] is not None and signum == signal.SIGINT and flag["abortable"]:
            raise KeyboardInterrupt
        flag["stop"] = flag["stop"] or signal.Signals(signum).name

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


class Trainer:
    """One run. Everything is checked before its folder is touched (:meth:`_prepare`: the folder, the data, the
    whole build, a forward pass, the checkpoint on resume); then the method is wrapped in DDP under torchrun, each
    process takes its own state from the checkpoint on resume (:meth:`_restore_own`), and the main process creates
    or clears the folder and locks it (:meth:`_open`). Under torchrun an error in any of these steps on any process
    stops every process with that error."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False):
        self.dist, self.device = dist_utils.init_distributed(cfg.train.device)
        self.run_dir, self.lock = cfg.run_path, None
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best: dict | None = None
        self.train_time = 0.0
        self.images_seen = 0
        self.epoch_stats: dict = {}  # training statistics of the last finished epoch
        self.resumed_window: dict | None = None  # statistics of a partly trained epoch, from the checkpoint
        self.resumed_own: dict | None = None  # this process's own state in the checkpoint (see _own_state)
        self.resumed_stamp: tuple | None = None  # the checkpoint read on resume (inode, size, time), to see it change
        self.eval_files: dict | None = None  # documents of the last evaluation (reliability bins), for the folder
        dist_utils.together(lambda: self._prepare(cfg, resume, overwrite))
        if self.dist.enabled:
            self.step.distribute()  # collectives: outside `together`, whose checks can fail on some processes only
        if resume:
            dist_utils.together(self._restore_own)  # after the wrap, which copies the main process's buffers
        self.lock = dist_utils.together(lambda: self._open(cfg, resume, overwrite), main_only=True)

    def _prepare(self, cfg: Config, resume: bool, overwrite: bool) -> None:
        check_free(self.run_dir)
        if resume:
            check_run(self.run_dir, "--resume")
        else:
            check_new(self.run_dir, overwrite)
        seed_everything(cfg.seed + self.dist.rank, cfg.train.deterministic)
        self.splits = load_dataset(cfg.data.dataset, cfg.data.data_dir, **cfg.data.options)
        parts = build_run(cfg, self.splits, self.device, self.dist)
        self.cfg, self.task = parts.cfg, TASKS[parts.method.task]
        self.method, self.optimizer, self.step = parts.method, parts.optimizer, parts.step
        self.train_loader, self.test_loader = parts.train_loader, parts.test_loader
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self._check_forward()
        self.logger = RunLogger(self.run_dir, self.dist.main, resume=resume)  # writes nothing before a row
        if resume:
            self._restore()

    def _check_forward(self) -> None:
        """Draw the first training batch (in-memory data only, where it is cheap) and run the eval model on two
        blank images of the training size, so that data, augmentation or model settings that cannot work fail
        before the run folder is touched. Neither changes any state of the run."""
        data = self.cfg.data
        if isinstance(self.train_loader, ResidentLoader):
            try:
                next(iter(self.train_loader), None)
            except (RuntimeError, ValueError, IndexError) as err:
                raise ConfigError(f"The data settings cannot make a training batch ({first_line(err)}); check "
                                  "data.augment, image_size, padding and rrc_scale.") from None
        size = data.image_size or self.splits.image_size
        blank = torch.zeros(2, self.splits.in_channels, size, size, device=self.device)
        module = self.method.eval_model()
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.step.dtype):
                module(blank)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ConfigError(f"Model '{self.cfg.model.name}' cannot run on {self.splits.in_channels}×{size}×{size} "
                              f"images ({first_line(err)}); check data.image_size and the model options.") from None
        finally:
            module.train(was_training)

    def _open(self, cfg: Config, resume: bool, overwrite: bool) -> int:
        """Create or clear the run folder and lock it (main process), then write the config as given: a new run's,
        or on resume the settings this resume uses (e.g. a new ``--epochs``), so that the next resume continues
        with them."""
        lock = open_run(self.run_dir, resume, overwrite)
        try:
            if resume and _stamp(self.run_dir / CHECKPOINT) != self.resumed_stamp:
                raise ConfigError(f"{self.run_dir / CHECKPOINT} was replaced while this process read it (another "
                                  "process was writing the run). Run the command again.")
            atomic_write(self.run_dir / CONFIG, lambda tmp: tmp.write_text(_yaml(cfg.to_dict())),
                         next_step(self.run_dir))
        except BaseException:
            release(lock)
            raise
        return lock

    def close(self) -> None:
        """Close the logs and release the run folder."""
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        if self.lock is not None:
            release(self.lock)
            self.lock = None

    # ------------------------------------------------------------------ state

    def _own_state(self) -> dict:
        """What each process keeps for itself, on the CPU: its random streams, its buffers (DDP runs with
        ``broadcast_buffers=False``; :attr:`~selfkd.methods.Method.shared_buffers` excepted) and its statistics of
        the epoch so far (None at an epoch's end)."""
        kept = self.method.state_dict().keys() - set(self.method.shared_buffers)
        window = self.step.stats.state() if self.step_in_epoch else None
        return {"rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
                "buffers": {name: b.detach().cpu() for name, b in self.method.named_buffers() if name in kept},
                "window": None if window is None else {k: v.cpu() if isinstance(v, torch.Tensor) else v
                                                       for k, v in window.items()}}

    def _payload(self, own: dict, processes: list | None) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "method": self.cfg.method.name, "model": self.cfg.model.name,
            "num_classes": self.splits.num_classes,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "method_state": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "rng": own["rng"], "window": own["window"],  # the main process's
            "best": self.best, "train_time": self.train_time, "images_seen": self.images_seen,
            "world_size": self.dist.world,
            **({"processes": processes} if processes else {}),  # under torchrun: every process's, rank-indexed
        }

    def save(self) -> None:
        """Write the checkpoint (main process; under torchrun with every process's own state). A failed write stops
        every process with its message."""
        own = self._own_state()
        processes = dist_utils.gather_to_main(own) if self.dist.enabled else None
        dist_utils.together(lambda: save_checkpoint(self.run_dir / CHECKPOINT, self._payload(own, processes),
                                                    next_step(self.run_dir)), main_only=True)

    def _restore(self) -> None:
        path = self.run_dir / CHECKPOINT
        self.resumed_stamp = _stamp(path)
        ckpt = load_run_checkpoint(path, self.method, self.cfg.method.name, self.cfg.model.name,
                                   self.splits.num_classes)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                self.step.scaler.load_state_dict(ckpt["scaler"])
        except LOAD_ERRORS as err:
            raise does_not_fit(path, err) from None
        epochs, done, steps = self.cfg.train.epochs, ckpt["epoch"], ckpt["step_in_epoch"]
        if done > epochs or (done == epochs and steps):
            where = f"in epoch {done + 1} (step {steps})" if steps else f"after epoch {done}"
            raise ConfigError(f"{path} was saved {where}, past train.epochs={epochs} of this resume: a run cannot "
                              f"go back. Resume with --epochs {done + bool(steps)} or more.")
        saved, now = ckpt["config"], self.cfg.to_dict()
        moved = [key for key in (("data", "batch_size"), ("data", "train_subset"), ("seed",))
                 if _get(saved, key) != _get(now, key)]  # what decides an epoch's batches
        if ckpt["step_in_epoch"] and moved:
            changed = ", ".join(f"{'.'.join(key)} {_get(now, key)} (saved: {_get(saved, key)})" for key in moved)
            raise ConfigError(f"{path} stopped in the middle of epoch {ckpt['epoch'] + 1} (step "
                              f"{ckpt['step_in_epoch']}) and this resume changes {changed}: the rest of the epoch "
                              "would not be the batches it left. Resume with the run's own values (leave those options "
                              "out).")
        processes = ckpt.get("processes") or []
        if len(processes) == self.dist.world > 1:
            self.resumed_own = processes[self.dist.rank]
        else:  # one process, or another number of them than saved it: the main process's state
            self.resumed_own = {"rng": ckpt["rng"], "window": ckpt.get("window")}
        if ckpt.get("world_size", self.dist.world) != self.dist.world:
            self.logger.print(f"note: the run was saved by {ckpt['world_size']} processes and resumes on "
                              f"{self.dist.world}; the global batch is the same, but per-process state (random "
                              "streams, BatchNorm batches, per-process caches) differs from an uninterrupted run.")
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.global_step = ckpt["global_step"]
        self.best, self.train_time = ckpt.get("best"), ckpt.get("train_time", 0.0)
        self.images_seen = ckpt.get("images_seen", 0)
        self.logger.print(f"Resuming {self.run_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}."
                          if self.epoch < self.cfg.train.epochs else
                          f"Resuming {self.run_dir}: its {self.epoch} epochs are trained; writing its final files.")

    def _restore_own(self) -> None:
        """This process's own state from the checkpoint (:meth:`_own_state`): its random streams, its buffers (when
        the checkpoint has them for this number of processes) and its statistics of the epoch so far."""
        own, path = self.resumed_own, self.run_dir / CHECKPOINT
        try:
            torch.set_rng_state(own["rng"]["torch"])
            if self.device.type == "cuda" and own["rng"].get("cuda"):
                torch.cuda.set_rng_state_all(own["rng"]["cuda"])
            self.method.load_state_dict(own.get("buffers", {}), strict=False)
        except LOAD_ERRORS as err:
            raise does_not_fit(path, err) from None
        self.resumed_window = own["window"]

    # ------------------------------------------------------------------ loop

    def fit(self, signal_flag: dict | None = None) -> dict:
        """Train the remaining epochs and write the final files; ``signal_flag``: see :func:`stop_on_signals`."""
        self.logger.print(f"selfkd {__version__}: {self.cfg.method.name} on {self.cfg.model.name}, "
                          f"{self.cfg.data.dataset} ({len(self.train_loader)} steps/epoch), device {self.device}, "
                          f"run folder {self.run_dir}")
        needs, sampler = self.method.data_needs, self.train_loader.sampler
        if needs.class_partners:
            self.logger.print(
                f"note: a step holds {sampler.batch_size} anchor(s), each with {needs.class_partners} same-class "
                f"partner(s): {sampler.batch_size * (needs.class_partners + 1)} images (data.batch_size counts "
                f"{'all of them' if needs.partners_in_batch else 'the anchors'}).")
        if sampler.dropped:
            self.logger.print(
                f"note: {self.cfg.method.name} needs at least {needs.min_batch} images per process in a step, so the "
                f"last batch of each epoch ({sampler.dropped} image(s), a different random few each epoch) is left "
                "out.")
        self.load_watch = LoadWatch(self.device.type == "cpu")  # says once if the CPU is oversubscribed
        try:
            return self._loop(dist_utils.StopVote(signal_flag or {"stop": None}))
        except KeyboardInterrupt:  # the second Ctrl-C
            raise Interrupted(
                f"Aborted by a second Ctrl-C at epoch {self.epoch + 1}, step {self.step_in_epoch}: the steps since "
                "the last checkpoint are lost, and a file being written was abandoned (its previous version is "
                f"intact). {next_step(self.run_dir)}") from None
        except SelfKDError as err:  # e.g. a corrupt image: every error that stops training says what to run next
            then = next_step(self.run_dir)
            if not str(err).endswith(then):
                err.args = (f"{err} {then}",)
            raise

    def _loop(self, stop: dist_utils.StopVote) -> dict:
        t = self.cfg.train
        while self.epoch < t.epochs:
            self._train_epoch(stop)
            row = {"epoch": self.epoch + 1, **self.epoch_stats}
            if (self.epoch + 1) % t.eval_every == 0 or self.epoch + 1 == t.epochs:
                test = self.evaluate()
                row.update({f"test/{k}": v for k, v in test.items() if k != "n"})
                primary = self.task.primary
                if self.best is None or test[primary] > self.best[primary]:
                    self.best = {"epoch": self.epoch + 1, primary: test[primary]}
            self.epoch += 1
            self.step_in_epoch = 0
            self.logger.log_epoch(row, self.global_step)
            self.logger.print(epoch_line(row, t.epochs, self.method.task))
            if (note := self.load_watch.note()) is not None:
                self.logger.print(note)
            self.save()
            if self.epoch < t.epochs and stop.now():  # asked during the evaluation or the save
                stop.flag["abortable"] = False
                raise dist_utils.agreed(Interrupted(  # fit adds what to run next
                    f"Stopped by {stop.name} after epoch {self.epoch}; checkpoint saved in "
                    f"{self.run_dir / CHECKPOINT}."))
        return self.finish()

    def _train_epoch(self, stop: dist_utils.StopVote) -> None:
        t = self.cfg.train
        self.method.train()
        if self.step_in_epoch == 0:  # resuming mid-epoch: the method's state comes from the checkpoint
            self.method.on_epoch_start(self.epoch, t.epochs)
        self.train_loader.set_epoch(self.epoch)
        steps = len(self.train_loader)
        self.step.reset()
        if self.resumed_window:  # resuming mid-epoch: keep the epoch's statistics so far
            self.step.stats.load_state(self.resumed_window)
            self.resumed_window = None
        window_start = self.global_step - self.step_in_epoch  # the epoch's first step, which the statistics count from
        bar = None
        if use_progress_bar(t.progress) and self.dist.main:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{t.epochs}",
                       leave=False, dynamic_ncols=True)
        started, seen_before = time.perf_counter(), self.step.stats.seen
        try:
            for batch in self.train_loader.iter_from(self.step_in_epoch):
                vote = stop.start()  # runs while the step does
                factor = lr_factor(self.cfg.schedule, self.global_step, steps, t.epochs)
                for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                    group["lr"] = base * factor
                self.step(batch.images, batch.targets, batch.index, last=self.step_in_epoch + 1 == steps)
                self.global_step += 1
                self.step_in_epoch += 1
                if self.step_in_epoch % t.log_every == 0 or self.step_in_epoch == steps:
                    self._check_finite(window_start)
                    stats = self._train_summary()  # running means over the epoch so far
                    self.logger.log_steps({"step/loss": stats.get("train/loss", math.nan),
                                           "step/lr": self.optimizer.param_groups[0]["lr"]}, self.global_step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{stats.get('train/loss', math.nan):.3f}",
                                        acc=f"{stats.get('train/' + self.task.train_accuracy, 0):.1f}")
                if bar is not None:
                    bar.update(1)
                # Stops and checkpoints fall between optimizer steps (accumulated gradients are not checkpointed).
                if stop.result(vote) and self.step.pending == 0:
                    self._check_finite(window_start)
                    self._account(started, seen_before)
                    self.save()
                    stop.flag["abortable"] = False
                    raise dist_utils.agreed(Interrupted(
                        f"Stopped by {stop.name} at epoch {self.epoch + 1}, step {self.step_in_epoch}; checkpoint "
                        f"saved in {self.run_dir / CHECKPOINT}."  # fit adds what to run next
                    ))
        finally:
            if bar is not None:
                bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed, seen = self._account(started, seen_before)
        self._check_finite(window_start)
        self.epoch_stats = {**self._train_summary(), "lr": self.optimizer.param_groups[0]["lr"],
                            "time/epoch_s": elapsed, "time/img_per_s": seen * self.dist.world / max(elapsed, 1e-9)}

    def _account(self, started: float, seen_before: int) -> tuple[float, int]:
        """Add the time and images since ``started`` to the run's totals; returns them (images on this rank:
        primary images, i.e. anchors and first views, as an epoch counts them)."""
        elapsed, seen = time.perf_counter() - started, self.step.stats.seen - seen_before
        self.train_time += elapsed
        self.images_seen += seen * self.dist.world
        return elapsed, seen

    def _train_summary(self) -> dict:
        return self.step.stats.summary(self.task.train_accuracy)

    def _check_finite(self, window_start: int) -> None:
        bad = self.step.stats.nonfinite()  # the same answer on every process
        if bad is None:
            return
        step, terms = bad
        raise dist_utils.agreed(TrainingError(
            f"Non-finite loss ({', '.join(terms)}) at training step {window_start + step + 1} "
            f"(epoch {self.epoch + 1}); nothing from that step on was saved. Lower the learning rate, enable "
            "train.grad_clip, turn train.amp off, or set train.nonfinite=skip to skip such steps (each as --set "
            "KEY=VALUE added to the command below)."  # fit adds the command
        ))

    def evaluate(self) -> dict:
        """The task's metrics of the module the run exports, on the test split; keeps the evaluation's files."""
        evaluation = evaluate(self.method.eval_model(), self.test_loader, self.device, self.step.dtype,
                              Evaluation(self.method.task, self.splits.num_classes, self.device,
                                         self.splits.ignore_index))
        result = evaluation.result()  # combines the processes' states first
        self.eval_files = evaluation.files()
        return result

    def finish(self) -> dict:
        if self.eval_files is None:  # resumed after the last epoch: evaluate again for the evaluation's files
            self.evaluate()
        final = self.logger.rows[-1] if self.logger.rows else {}
        exported = self.method.eval_model()
        summary = {
            "selfkd_version": __version__, "task": self.method.task,
            "name": self.cfg.run_name, "method": self.cfg.method.name, "model": self.cfg.model.name,
            "dataset": self.cfg.data.dataset, "seed": self.cfg.seed, "epochs": self.cfg.train.epochs,
            "final": {k[len("test/"):]: v for k, v in final.items() if k.startswith("test/")},
            "best_on_test": dict(self.best or {}, note="selected on the test set; report 'final' instead"),
            "train_time_s": self.train_time,
            "img_per_s": self.images_seen / self.train_time if self.train_time else None,
            "params": sum(p.numel() for p in exported.parameters()),
            "extra_params": self.method.extra_parameters(),
            "device": str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "world_size": self.dist.world,
            "settings": {k: getattr(self.cfg.train, k) for k in ("amp", "channels_last", "compile")},
        }
        if self.method.task == "segmentation":
            summary["classes"] = list(self.splits.classes)  # the names of final's iou_per_class
        if self.dist.main:
            data = self.cfg.data
            meta = {"model": self.cfg.model.name, "num_classes": self.splits.num_classes,
                    "in_channels": self.splits.in_channels, "model_options": self.cfg.model.options(),
                    "method": self.cfg.method.name, "method_options": self.cfg.method.options(),
                    "task": self.method.task, "selfkd_version": __version__,
                    "image_size": data.image_size or self.splits.image_size,  # what a deployer must feed it
                    "mean": list(data.mean or self.splits.mean), "std": list(data.std or self.splits.std),
                    "classes": list(self.splits.classes),
                    # how it was evaluated, for `selfkd eval --weights`
                    "dataset": data.dataset, "data_options": data.options, "eval_size": data.eval_size,
                    "test_resize": data.test_resize, "amp": self.cfg.train.amp}
            then = next_step(self.run_dir)
            save_eval_model(self.run_dir / WEIGHTS, self.method, meta, then)
            for stem, document in self.eval_files.items():
                atomic_write(self.run_dir / f"{stem}.json", lambda tmp, d=document: tmp.write_text(json.dumps(d)), then)
            if self.method.task == "segmentation":  # a few test predictions for the report's figure
                write_examples(self.run_dir / EXAMPLES, exported, self.test_loader, self.splits.classes, self.device,
                               self.step.dtype, then=then)
            atomic_write(self.run_dir / SUMMARY, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)), then)
        return summary


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


def epoch_line(row: dict, epochs: int, task: str) -> str:
    """``epoch 3/10  loss 0.4212  train 91.20%  test 88.10%  nll 0.351  ece 2.10%  5123 img/s``: the task's test
    metrics that have a console label (:class:`selfkd.metrics.Column`), in their order."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row.get('train/loss', math.nan):.4f}",
             f"train {row.get('train/' + TASKS[task].train_accuracy, math.nan):.2f}%"]
    for column in columns(task):
        value = row.get(f"test/{column.key}")
        if column.line and isinstance(value, (int, float)):
            parts.append(f"{column.line} {column.format(value)}")
    parts.append(f"{row.get('time/img_per_s', 0):.0f} img/s")
    return "  ".join(parts)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def finished(cfg: Config) -> dict | None:
    """The summary of the run ``cfg`` describes when it trained all of ``cfg``'s epochs and saved nothing since
    (None otherwise: there is more to train, or ``cfg`` is another run, which resuming refuses)."""
    summary, checkpoint = cfg.run_path / SUMMARY, cfg.run_path / CHECKPOINT
    try:
        done = json.loads(summary.read_text())
        newer = not checkpoint.exists() or summary.stat().st_mtime_ns >= checkpoint.stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    same = isinstance(done, dict) and [done.get("method"), done.get("model"), done.get("dataset")] == [
        cfg.method.name, cfg.model.name, cfg.data.dataset]
    return done if same and newer and isinstance(done.get("epochs"), int) and done["epochs"] >= cfg.train.epochs \
        else None


def train(cfg: Config | dict, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one run and return its summary (the Python API behind ``selfkd train``). Resuming a finished run
    changes nothing and returns its summary."""
    if isinstance(cfg, dict):
        cfg = build_config(cfg)
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and (cfg.run_path / CHECKPOINT).exists():
        resume, overwrite = True, False  # torchrun restarted the workers: continue from the last checkpoint
    if resume and (done := finished(cfg)) is not None:
        if dist_utils.env_rank() == 0:
            print(f"The run in {cfg.run_path} is finished ({done['epochs']}/{done['epochs']} epochs); nothing was "
                  f"changed. Evaluate it with `selfkd eval --run {cfg.run_path}`, or train it further with "
                  f"`selfkd train --resume {cfg.run_path} --epochs N`.", flush=True)
        return done
    try:
        trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    except BaseException as err:
        dist_utils.shutdown()
        if isinstance(err, KeyboardInterrupt):  # Ctrl-C before the training loop (the folder may be made by then)
            raise Interrupted(f"Interrupted while the run was being prepared. {next_step(cfg.run_path)}") from None
        raise
    try:
        with stop_on_signals() as signal_flag:  # until the folder is released: a late Ctrl-C cuts nothing short
            try:
                return trainer.fit(signal_flag)
            finally:
                signal_flag["abortable"] = False
                trainer.close()
    finally:
        dist_utils.shutdown()


def _get(config: dict, key: tuple):
    for part in key:
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns
