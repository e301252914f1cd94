"""The training loop. It knows nothing about any particular method or task: it builds the data a method declares it
needs, calls the method, back-propagates ``loss``, logs every named term and evaluates the task's metrics (the task
table, :mod:`selfkd.tasks`, says what differs between tasks).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from ..atomic import atomic_write
from ..config import Config, build_config
from ..data.datasets import load_dataset
from ..data.holdout import training_size
from ..data.resident import ResidentLoader
from ..errors import ConfigError, DatasetError, Interrupted, SelfKDError, TrainingError, first_line
from ..memory import check_fits, forward_bytes
from ..metrics import Evaluation
from ..models.pretrained import LoadReport
from ..runfolder import (
    CHECKPOINT,
    CONFIG,
    EXAMPLES,
    PRETRAINED,
    SUMMARY,
    WEIGHTS,
    RunSummary,
    check_free,
    check_new,
    check_run,
    finished_summary,
    next_step,
    open_run,
    release,
)
from ..tasks import TASKS
from ..threads import LoadWatch
from ..version import __version__
from ..weights import WeightsMeta, save_eval_model
from . import distributed as dist_utils
from .checkpoint import save_checkpoint
from .evaluation import evaluate
from .examples import write_examples
from .logger import RunLogger, epoch_line, progress_bar
from .resume import Progress, checkpoint_payload, own_state, restore, restore_own
from .schedule import lr_factor
from .setup import build_run
from .signals import stop_on_signals
from .step import autocast, seed_everything


class Trainer:
    """One run. Everything is checked before its folder is touched (:meth:`_prepare`: the folder, the data, the
    whole build, a forward pass, the checkpoint on resume); then the method is wrapped in DDP under torchrun, each
    process takes its own state from the checkpoint on resume, and the main process creates or clears the folder and
    locks it (:meth:`_open`). Under torchrun an error in any of these steps on any process stops every process with
    that error."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False):
        self.dist, self.device = dist_utils.init_distributed(cfg.train.device)
        self.run_dir, self.lock = cfg.run_path, None
        self.progress = Progress()
        self.epoch_stats: dict = {}  # training statistics of the last finished epoch
        self.resumed_own: dict | None = None  # this process's own state in the checkpoint (see resume.own_state)
        self.resumed_window: dict | None = None  # statistics of a partly trained epoch, from the checkpoint
        self.resumed_stamp: tuple | None = None  # the checkpoint read on resume (inode, size, time), to see it change
        self.eval_files: dict | None = None  # documents of the last test evaluation (reliability bins), for the folder
        self.last_test: dict | None = None  # the last test evaluation of this process's epochs
        dist_utils.together(lambda: self._prepare(cfg, resume, overwrite))
        if self.dist.enabled:
            self.step.distribute()  # collectives: outside `together`, whose checks can fail on some processes only
        if resume:  # after the wrap, which copies the main process's buffers
            self.resumed_window = dist_utils.together(
                lambda: restore_own(self.resumed_own, self.method, self.device, self.run_dir / CHECKPOINT))
        self.lock = dist_utils.together(lambda: self._open(cfg, resume, overwrite), main_only=True)

    def _prepare(self, cfg: Config, resume: bool, overwrite: bool) -> None:
        check_free(self.run_dir)
        if resume:
            check_run(self.run_dir, "--resume")
        else:
            check_new(self.run_dir, overwrite)
        seed_everything(cfg.seed + self.dist.rank, cfg.train.deterministic)
        self.splits = load_dataset(cfg.data.dataset, cfg.data.data_dir, **cfg.data.options)
        parts = build_run(cfg, self.splits, self.device, self.dist, _resumed_weights(self.run_dir, cfg) if resume
                          else None)
        self.cfg, self.task, self.pretrained = parts.cfg, TASKS[parts.method.task], parts.pretrained
        self.method, self.optimizer, self.step = parts.method, parts.optimizer, parts.step
        self.train_loader, self.test_loader, self.val_loader = parts.train_loader, parts.test_loader, parts.val_loader
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self._check_forward()
        self.logger = RunLogger(self.run_dir, self.dist.main, resume=resume)  # writes nothing before a row
        if resume:
            self._restore()

    def _check_forward(self) -> None:
        """Draw the first training batch (in-memory data only, where it is cheap) and run the eval model on two
        blank images of the training size, so that data, augmentation or model settings that cannot work fail
        before the run folder is touched (image sizes that cannot fit in memory before anything is allocated).
        Neither changes any state of the run."""
        size, channels, d = self.cfg.data.image_size, self.splits.in_channels, self.cfg.data
        largest = max(size, d.eval_size or 0, d.test_resize or 0)
        check_fits(forward_bytes(2, channels, largest), f"A forward pass of 2 images of {channels}×{largest}×{largest}",
                   "data.image_size, data.eval_size or data.test_resize")
        if isinstance(self.train_loader, ResidentLoader):
            try:
                next(iter(self.train_loader), None)
            except (RuntimeError, ValueError, IndexError) as err:
                raise ConfigError(f"The data settings cannot make a training batch ({first_line(err)}); check "
                                  "data.augment, image_size, padding and rrc_scale.") from None
        blank = torch.zeros(2, channels, size, size, device=self.device)
        module = self.method.eval_model()
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.step.dtype):
                module(blank)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ConfigError(f"Model '{self.cfg.model.name}' cannot run on {channels}×{size}×{size} images "
                              f"({first_line(err)}); check data.image_size and the model options.") from None
        finally:
            module.train(was_training)

    def _restore(self) -> None:
        path = self.run_dir / CHECKPOINT
        self.resumed_stamp = _stamp(path)
        self.progress, self.resumed_own = restore(path, self.cfg, self.splits.num_classes, self.method,
                                                  self.optimizer, self.step, self.dist.world, self.dist.rank,
                                                  self.logger.print)
        epoch, step = self.progress.epoch, self.progress.step_in_epoch
        self.logger.print(f"Resuming {self.run_dir} at epoch {epoch + 1}, step {step}." if epoch < self.cfg.train.epochs
                          else f"Resuming {self.run_dir}: its {epoch} epochs are trained; writing its final files.")

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
            if self.pretrained is not None and not resume:
                text = self.pretrained.to_json()
                atomic_write(self.run_dir / PRETRAINED, lambda tmp: tmp.write_text(text), next_step(self.run_dir))
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

    def save(self) -> None:
        """Write the checkpoint (main process; under torchrun with every process's own state). A failed write stops
        every process with its message."""
        own = own_state(self.method, self.step, self.device, self.progress.step_in_epoch > 0)
        processes = dist_utils.gather_to_main(own) if self.dist.enabled else None
        payload = checkpoint_payload(self.cfg, self.splits.num_classes, self.progress, self.method, self.optimizer,
                                     self.step, own, processes, self.dist.world)
        dist_utils.together(lambda: save_checkpoint(self.run_dir / CHECKPOINT, payload, next_step(self.run_dir)),
                            main_only=True)

    # ------------------------------------------------------------------ loop

    def fit(self, signal_flag: dict | None = None) -> dict:
        """Train the remaining epochs and write the final files; ``signal_flag``: see :func:`stop_on_signals`."""
        self._print_start()
        self.load_watch = LoadWatch(self.device.type == "cpu")  # says once if the CPU is oversubscribed
        try:
            return self._loop(dist_utils.StopVote(signal_flag or {"stop": None}))
        except KeyboardInterrupt:  # the second Ctrl-C
            raise Interrupted(
                f"Aborted by a second Ctrl-C at epoch {self.progress.epoch + 1}, step {self.progress.step_in_epoch}: "
                "the steps since the last checkpoint are lost, and a file being written was abandoned (its previous "
                f"version is intact). {next_step(self.run_dir)}") from None
        except SelfKDError as err:  # e.g. a corrupt image: every error that stops training says what to run next
            then = next_step(self.run_dir)
            if not str(err).endswith(then):
                err.args = (f"{err} {then}",)
            raise

    def _print_start(self) -> None:
        self.logger.print(f"selfkd {__version__}: {self.cfg.method.name} on {self.cfg.model.name}, "
                          f"{self.cfg.data.dataset} ({len(self.train_loader)} steps/epoch), device {self.device}, "
                          f"run folder {self.run_dir}")
        if self.pretrained is not None and self.resumed_stamp is None:  # a new run: what it starts from
            self.logger.print(self.pretrained.text())
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

    def _loop(self, stop: dist_utils.StopVote) -> dict:
        t, p = self.cfg.train, self.progress
        while p.epoch < t.epochs:
            self._train_epoch(stop)
            row = {"epoch": p.epoch + 1, **self.epoch_stats, **self._evaluate_epoch(p.epoch + 1)}
            p.epoch += 1
            p.step_in_epoch = 0
            self.logger.log_epoch(row, p.global_step)
            self.logger.print(epoch_line(row, t.epochs, self.task.name))
            if (note := self.load_watch.note()) is not None:
                self.logger.print(note)
            self.save()
            if p.epoch < t.epochs and stop.now():  # asked during the evaluation or the save
                stop.flag["abortable"] = False
                raise dist_utils.agreed(Interrupted(  # fit adds what to run next
                    f"Stopped by {stop.name} after epoch {p.epoch}; checkpoint saved in {self.run_dir / CHECKPOINT}."))
        return self.finish()

    def _evaluate_epoch(self, epoch: int) -> dict:
        """On the evaluation epochs (every ``eval_every`` and the last): the validation metrics and (``eval_test:
        every``) the test metrics, as the ``val/`` and ``test/`` columns of the epoch's row; keeps the best epochs
        so far, and under ``select: best_val`` the method's state at the end of the best validation epoch."""
        t, p, primary = self.cfg.train, self.progress, self.task.primary
        if epoch % t.eval_every and epoch != t.epochs:
            return {}
        row = {}
        if self.val_loader is not None:
            val = self.evaluate(self.val_loader)
            row.update({f"val/{k}": v for k, v in val.items() if k != "n"})
            if p.best_val is None or val[primary] > p.best_val[primary]:
                p.best_val = {"epoch": epoch, primary: val[primary]}
                if t.select == "best_val":
                    p.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.method.state_dict().items()}
        if t.eval_test == "every":
            self.last_test = {k: v for k, v in self.evaluate().items() if k != "n"}
            row.update({f"test/{k}": v for k, v in self.last_test.items()})
            if p.best is None or self.last_test[primary] > p.best[primary]:
                p.best = {"epoch": epoch, primary: self.last_test[primary]}
        return row

    def _train_epoch(self, stop: dist_utils.StopVote) -> None:
        p, steps = self.progress, self._start_epoch()
        window_start = p.global_step - p.step_in_epoch  # the epoch's first step, which the statistics count from
        bar = progress_bar(self.cfg.train.progress, self.dist.main, steps, p.step_in_epoch,
                           f"epoch {p.epoch + 1}/{self.cfg.train.epochs}")
        started, seen_before = time.perf_counter(), self.step.stats.seen
        try:
            for batch, error in self._batches():
                vote = stop.start(error is not None)  # runs while the step does
                factor = lr_factor(self.cfg.schedule, p.global_step, steps, self.cfg.train.epochs)
                for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                    group["lr"] = base * factor
                self.step(batch.images, batch.targets, batch.index, last=p.step_in_epoch + 1 == steps)
                p.global_step += 1
                p.step_in_epoch += 1
                if p.step_in_epoch % self.cfg.train.log_every == 0 or p.step_in_epoch == steps:
                    self._log_steps(window_start, bar)
                if bar is not None:
                    bar.update(1)
                stopped = stop.result(vote)
                if stop.failed:  # a process could not read its batch: all stop with its message
                    dist_utils.together(lambda e=error: _raise(e))
                # Stops and checkpoints fall between optimizer steps (accumulated gradients are not checkpointed).
                if stopped and self.step.pending == 0:
                    self._stop_in_epoch(stop, window_start, started, seen_before)
        finally:
            if bar is not None:
                bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed, seen = self._account(started, seen_before)
        self._check_finite(window_start)
        self.epoch_stats = {**self._train_summary(), "lr": self.optimizer.param_groups[0]["lr"],
                            "time/epoch_s": elapsed, "time/img_per_s": seen * self.dist.world / max(elapsed, 1e-9)}

    def _batches(self):
        """The epoch's batches from the run's position, as ``(batch, None)``. Under torchrun, a batch this process
        cannot read (a :class:`DatasetError`, e.g. a bad mask) is ``(the previous batch, the error)``: the stand-in
        keeps the step's collectives going on every process, the step's stop vote carries the failure, and every
        process then stops with the message (nothing of that step is saved). The first batch of the epoch is agreed
        on before any step. In one process the error is raised at once."""
        batches = iter(self.train_loader.iter_from(self.progress.step_in_epoch))
        batch = dist_utils.together(lambda: next(batches, None))
        while batch is not None:
            yield batch, None
            try:
                following = next(batches, None)
            except DatasetError as err:
                if not self.dist.enabled:
                    raise
                yield batch, err
                return
            batch = following

    def _start_epoch(self) -> int:
        """Put the method and loader at the run's position; returns the epoch's steps. A mid-epoch resume keeps the
        method's state (from the checkpoint) and the epoch's statistics so far."""
        self.method.train()
        if self.progress.step_in_epoch == 0:
            self.method.on_epoch_start(self.progress.epoch, self.cfg.train.epochs)
        self.train_loader.set_epoch(self.progress.epoch)
        self.step.reset()
        if self.resumed_window:
            self.step.stats.load_state(self.resumed_window)
            self.resumed_window = None
        return len(self.train_loader)

    def _log_steps(self, window_start: int, bar) -> None:
        """Check the losses so far are finite, log the running means, update the progress bar's numbers."""
        self._check_finite(window_start)
        stats = self._train_summary()  # running means over the epoch so far
        self.logger.log_steps({"step/loss": stats.get("train/loss", math.nan),
                               "step/lr": self.optimizer.param_groups[0]["lr"]}, self.progress.global_step)
        if bar is not None:
            bar.set_postfix(loss=f"{stats.get('train/loss', math.nan):.3f}",
                            acc=f"{stats.get('train/' + self.task.train_accuracy, 0):.1f}")

    def _stop_in_epoch(self, stop: dist_utils.StopVote, window_start: int, started: float, seen_before: int):
        """A stop was asked for: checkpoint after this step and stop every process."""
        self._check_finite(window_start)
        self._account(started, seen_before)
        self.save()
        stop.flag["abortable"] = False
        raise dist_utils.agreed(Interrupted(  # fit adds what to run next
            f"Stopped by {stop.name} at epoch {self.progress.epoch + 1}, step {self.progress.step_in_epoch}; "
            f"checkpoint saved in {self.run_dir / CHECKPOINT}."))

    def _account(self, started: float, seen_before: int) -> tuple[float, int]:
        """Add the time and images since ``started`` to the run's totals; returns them (images on this rank:
        primary images, i.e. anchors and first views, as an epoch counts them)."""
        elapsed, seen = time.perf_counter() - started, self.step.stats.seen - seen_before
        self.progress.train_time += elapsed
        self.progress.images_seen += seen * self.dist.world
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
            f"(epoch {self.progress.epoch + 1}); nothing from that step on was saved. Lower the learning rate, enable "
            "train.grad_clip, turn train.amp off, or set train.nonfinite=skip to skip such steps (each as --set "
            "KEY=VALUE added to the command below)."  # fit adds the command
        ))

    # ------------------------------------------------------------------ results

    def evaluate(self, loader=None) -> dict:
        """The task's metrics of the module the run exports on ``loader`` (default: the test split); a test
        evaluation keeps its files (reliability bins) for the run folder."""
        loader = self.test_loader if loader is None else loader
        evaluation = dist_utils.together(lambda: evaluate(  # an image one process cannot read stops them all
            self.method.eval_model(), loader, self.device, self.step.dtype,
            Evaluation(self.task.name, self.splits.num_classes, self.device)))
        result = evaluation.result()  # combines the processes' states first
        if loader is self.test_loader:
            self.eval_files = evaluation.files()
        return result

    def finish(self) -> dict:
        """Put the selected weights in the method, test them, and return the run's summary; the main process writes
        the final files (weights, the test evaluation's files, the task's examples, summary.json last)."""
        selected = self._select()
        final = self._final_test()
        summary = self._summary(selected, final)
        dist_utils.together(lambda: self._write_final(summary, final), main_only=True)  # a failure stops every process
        return summary.to_dict()

    def _write_final(self, summary: RunSummary, final: dict) -> None:
        then = next_step(self.run_dir)
        save_eval_model(self.run_dir / WEIGHTS, self.method, self._weights_meta().to_dict(), then)
        for stem, document in (self.eval_files or {}).items():
            atomic_write(self.run_dir / f"{stem}.json", lambda tmp, d=document: tmp.write_text(json.dumps(d)), then)
        if self.task.examples and final:  # a few test predictions for the report's figure
            write_examples(self.run_dir / EXAMPLES, self.method.eval_model(), self.test_loader,
                           self.splits.classes, self.device, self.step.dtype, then=then)
        text = json.dumps(summary.to_dict(), indent=2)
        atomic_write(self.run_dir / SUMMARY, lambda tmp: tmp.write_text(text), then)

    def _select(self) -> dict:
        """Load the weights ``train.select`` chooses into the method (``best_val``: those of the best validation
        epoch); returns which epoch and why, with its validation metric (None without a validation split)."""
        p, t, primary = self.progress, self.cfg.train, self.task.primary
        if t.select == "best_val":
            self.method.load_state_dict(p.best_state)
            epoch, value = p.best_val["epoch"], p.best_val[primary]
        else:
            last = self.logger.rows[-1] if self.logger.rows else {}
            epoch, value = p.epoch, last.get(f"val/{primary}")
        by = "the best validation " + primary if t.select == "best_val" else "the last epoch"
        return {"epoch": epoch, "by": t.select, "metric": f"val/{primary}" if self.val_loader else None,
                "value": value, "note": f"weights of epoch {epoch}, selected as {by} (train.select: {t.select})"}

    def _final_test(self) -> dict:
        """The test metrics of the selected weights: none under ``eval_test: never``; the last epoch's test
        evaluation when the last epoch is selected and was tested in this process; else a test evaluation now."""
        t = self.cfg.train
        if t.eval_test == "never":
            self.eval_files = None
            return {}
        if t.select == "last" and self.last_test is not None:
            return self.last_test
        return {k: v for k, v in self.evaluate().items() if k != "n"}

    def _summary(self, selected: dict, final: dict) -> RunSummary:
        p, cfg = self.progress, self.cfg
        best = dict(p.best, note="selected on the test set; report 'final' instead") if p.best else {}
        return RunSummary(
            selfkd_version=__version__, task=self.task.name, name=cfg.run_name, method=cfg.method.name,
            model=cfg.model.name, dataset=cfg.data.dataset, seed=cfg.seed, epochs=cfg.train.epochs, final=final,
            best_on_test=best, train_time_s=p.train_time,
            img_per_s=p.images_seen / p.train_time if p.train_time else None,
            params=sum(q.numel() for q in self.method.eval_model().parameters()),
            extra_params=self.method.extra_parameters(),
            device=str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            world_size=self.dist.world,
            settings={k: getattr(cfg.train, k) for k in ("amp", "channels_last", "compile")},
            classes=list(self.splits.classes), selected=selected, train_images=training_size(self.splits, cfg.data),
            val_images=self.val_loader.sampler.n if self.val_loader is not None else 0)

    def _weights_meta(self) -> WeightsMeta:
        cfg, data = self.cfg, self.cfg.data
        return WeightsMeta(
            model=cfg.model.name, num_classes=self.splits.num_classes, in_channels=self.splits.in_channels,
            model_options=cfg.model.options(), method=cfg.method.name, method_options=cfg.method.options(),
            task=self.task.name, selfkd_version=__version__, image_size=data.image_size, mean=list(data.mean),
            std=list(data.std), classes=list(self.splits.classes), dataset=data.dataset, data_options=data.options,
            eval_size=data.eval_size, test_resize=data.test_resize, amp=cfg.train.amp)


def train(cfg: Config | dict, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one run and return its summary (the Python API behind ``selfkd train``). Resuming a finished run
    changes nothing and returns its summary."""
    if isinstance(cfg, dict):
        cfg = build_config(cfg)
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and (cfg.run_path / CHECKPOINT).exists():
        resume, overwrite = True, False  # torchrun restarted the workers: continue from the last checkpoint
    if resume and (done := finished_summary(cfg.run_path, cfg.method.name, cfg.model.name, cfg.data.dataset,
                                            cfg.train.epochs)) is not None:
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


def _raise(error: Exception | None) -> None:
    if error is not None:
        raise error


def _resumed_weights(run_dir: Path, cfg: Config) -> LoadReport | None:
    """What a resumed run took from model.pretrained (its pretrained.json: which parameters, which preprocessing), None
    for a run that started from random weights. A resume keeps the trained weights, so it must start as the run did."""
    path = run_dir / PRETRAINED
    if path.is_file() != bool(cfg.model.pretrained):
        started, now = (("from model.pretrained", "leaves it out") if path.is_file()
                        else ("from random weights", f"sets model.pretrained: {cfg.model.pretrained}"))
        raise ConfigError(f"{run_dir} started {started}, and this resume {now}: a resume continues the run's trained "
                          "weights, with the preprocessing and learning rates of its start. Leave model.pretrained as "
                          "the run had it (its config.yaml).")
    return LoadReport.read(path) if path.is_file() else None


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns
