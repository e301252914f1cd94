"""``selfkd demo`` (``make demo``): ce, lightskd, frskd and the cskd baseline on real Fashion-MNIST,
then a comparison table and report; ``selfkd demo --task segmentation``: ce and frskd on ``fmnist_scenes``
(scenes composed from Fashion-MNIST), with per-class IoU and a figure of predictions in the report.

The recipes are files, not code: ``configs/demo/fashion_mnist.yaml`` (CPU: a 1,000-image subset trained to
convergence, 40 epochs with the papers' step decay, the compute of the old 5-epoch demo) and
``configs/demo/fashion_mnist_gpu.yaml`` (all 60,000 images, a paper-like schedule), chosen automatically by
whether CUDA is available; for segmentation ``fmnist_scenes.yaml`` and ``fmnist_scenes_gpu.yaml``. Seeds:
:data:`SEEDS` by setting, or ``--seeds``; with two or more the report gives each gain over ``ce`` a 95 % interval.

Before training, the demo times a few training steps and a test batch of each method through the training builder
(:func:`measure`) and prints the estimated total (:func:`run_seconds`); after each run the sweep prints the runs
done, the time so far and the time left. The runs go through :func:`selfkd.sweep.sweep`, so running the demo again
skips what is finished and resumes what was interrupted. ``<out>/demo.json`` records the command, the regime, the
machine and the measured wall time (``benchmarks/results_section.py`` reads it for the README).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write
from .errors import ConfigError, DatasetError
from .runfolder import DEMO_FILE
from .tasks import DEFAULT_TASK, TASKS

SEEDS = {"cpu": [0], "gpu": [0, 1, 2]}  # default --seeds (one on a CPU: `make demo` trains one run per method)
INSTALL_HINT = ("To get Fashion-MNIST: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; "
                "`make fashion-mnist` does this), or download the four *-ubyte.gz files from "
                "github.com/zalandoresearch/fashion-mnist into ./data/fashion-mnist/ (or pass --data-dir).")


def recipe_path(setting: str, task: str = DEFAULT_TASK) -> Path:
    """The demo recipe of a task in the source tree's configs/demo (or ./configs/demo)."""
    name = TASKS[task].demo.recipes[setting]
    for folder in (Path(__file__).resolve().parents[2] / "configs" / "demo", Path("configs") / "demo"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"The demo recipe configs/demo/{name} was not found next to the selfkd sources or in "
                      "./configs/demo. Run the demo from a checkout of the selfkd repository (`make demo`).")


def describe(setting: str, cfg, num_train: int, num_test: int) -> str:
    """The line that says which regime runs (data sizes, epochs and schedule, model, device) and how it differs
    from a run of the papers' recipes, where the task's demo names one (:attr:`selfkd.tasks.Demo.paper_run`)."""
    from .data.datasets import dataset_task

    demo, d, t = TASKS[dataset_task(cfg.data.dataset)].demo, cfg.data, cfg.train
    images = min(d.train_subset or num_train, num_train)
    train = f"{images:,} of {num_train:,}" if images < num_train else f"all {num_train:,}"
    test = f"{min(d.test_subset, num_test):,} of {num_test:,}" if d.test_subset else f"all {num_test:,}"
    width = cfg.model.options().get("width")
    data_name = demo.data_names.get(d.dataset, d.dataset)
    line = (f"Demo setting '{setting}': {data_name}, {train} training images, {test} test images, {t.epochs} epochs "
            f"({_schedule(cfg.schedule)}), {cfg.model.name}" + (f" (width {width})" if width else "")
            + f", batch {d.batch_size}, device {t.device}.")
    paper = demo.paper_run
    if paper is None:
        return line
    differs = [what for what, same in (
        ("dataset", data_name == paper["dataset"]), ("data size", images == paper["images"]),
        ("epochs", t.epochs == paper["epochs"]), ("model", cfg.model.name == paper["model"]),
        ("width", (width or paper["width"]) == paper["width"])) if not same]
    return line + (f" A paper run ({paper['dataset']}, {paper['images']:,} training images, {paper['epochs']} epochs, "
                   f"ResNet-18 of width {paper['width']}) differs in " + ", ".join(differs) + "." if differs else "")


def _schedule(sc) -> str:
    """``lr ×0.1 after epochs 20 and 30`` (multi-step), else ``cosine lr``."""
    if sc.name != "multistep" or not sc.milestones:
        return f"{sc.name} lr"
    *first, last = sc.milestones
    after = ", ".join(map(str, first)) + (" and " if first else "") + str(last)
    return f"lr ×{sc.gamma:g} after epoch{'s' if len(sc.milestones) > 1 else ''} {after}"


@dataclass
class Speed:
    """What a run of one method costs on this machine (seconds), measured by :func:`measure`."""

    step_s: float  # one training step, drawing and augmenting its batch included
    steps_per_epoch: int
    eval_batch_s: float  # one test batch
    eval_batches: int
    startup_s: float  # starting the process, reading the dataset and building the run
    epoch_s: float = 0.0  # what each epoch adds to its steps: writing the checkpoint


def measure(cfg, splits, load_s: float = 0.0, steps: int = 8):
    """Build the run of ``cfg`` exactly as training does (:func:`selfkd.engine.setup.build_run`) and time ``steps``
    training steps after an untimed warm-up step and two test batches after an untimed one (the median of each, so
    that a moment of other work on the machine does not count), and writing a checkpoint of the run's size (to a
    file, fsync included). ``load_s``: the time a training process takes to start and read the
    dataset, counted in the start-up. Compilation (off in the demo recipes) is not timed."""
    import os
    import tempfile

    import torch

    from .bench import cycle_batches, timed
    from .engine.distributed import resolve_device
    from .engine.setup import build_run
    from .engine.step import autocast, configure_backends

    device = resolve_device(cfg.train.device)
    configure_backends(cfg.train.deterministic)
    began = time.perf_counter()
    parts = build_run(cfg, splits, device)
    startup_s = load_s + time.perf_counter() - began

    def per_batch(loader, count: int, run) -> list[float]:
        """Seconds of each of ``count`` batches, drawn (augmented) and run, after one untimed warm-up batch."""
        batches = cycle_batches(loader, count + 1)
        timed(run, batches, 1, device)
        return [timed(run, batches, 1, device) for _ in range(count)]

    parts.method.train()
    parts.method.on_epoch_start(0, cfg.train.epochs)
    train = per_batch(parts.train_loader, steps, lambda b: parts.step(b.images, b.targets, b.index))
    module = parts.method.eval_model().eval()
    with torch.no_grad(), autocast(device, parts.step.dtype):
        test = per_batch(parts.test_loader, 2, lambda b: module(b.images))
    start = time.perf_counter()
    with tempfile.TemporaryFile() as fh:
        torch.save({"method_state": parts.method.state_dict(), "optimizer": parts.optimizer.state_dict()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    checkpoint_s = time.perf_counter() - start
    return Speed(statistics.median(train), len(parts.train_loader), statistics.median(test), len(parts.test_loader),
                 startup_s, checkpoint_s)


def evaluations(epochs: int, eval_every: int, done: int = 0) -> int:
    """Test-set evaluations in epochs ``done + 1 .. epochs``: every ``eval_every``-th epoch and the last."""
    return sum(1 for e in range(done + 1, epochs + 1) if e % eval_every == 0 or e == epochs)


def run_seconds(speed: Speed, epochs: int, eval_every: int, done: int = 0) -> float:
    """Estimated seconds of a run that has ``done`` of its ``epochs`` trained: start-up, the remaining epochs' training
    steps and checkpoints, and their evaluations over the whole test set."""
    return (speed.startup_s + (epochs - done) * (speed.steps_per_epoch * speed.step_s + speed.epoch_s)
            + evaluations(epochs, eval_every, done) * speed.eval_batches * speed.eval_batch_s)


def estimate(jobs, configs: dict, splits, load_s: float) -> dict[str, float]:
    """Estimated seconds of each job still to run (by run name), from :func:`measure` of its method's config in
    ``configs``; a resumed run counts the epochs its metrics.jsonl still lacks."""
    import torch

    from .runfolder import METRICS, read_metrics

    todo = [j for j in jobs if j.action != "skip"]
    started = time.perf_counter()  # each run is a new process: its interpreter and imports count too
    subprocess.run([sys.executable, "-c", "import selfkd.cli, selfkd.engine"], capture_output=True)
    load_s += time.perf_counter() - started
    speeds = {m: measure(configs[m], splits, load_s) for m in dict.fromkeys(j.method for j in todo)}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the GPU memory the measurements cached: the runs are other processes
    out = {}
    for job in todo:
        t = configs[job.method].train
        done = len(read_metrics(job.run_dir / METRICS)) if job.action == "resume" else 0
        out[job.name] = run_seconds(speeds[job.method], t.epochs, t.eval_every, min(done, t.epochs))
    return out


def estimate_line(estimates: dict[str, float], jobs) -> str:
    """``Estimated time: about 9.6 min for 4 runs (ce 1.5 min, lightskd 1.9 min, ...)``, per method over its runs."""
    from .report.table import format_duration

    per_method: dict[str, float] = {}
    for job in jobs:
        if job.name in estimates:
            per_method[job.method] = per_method.get(job.method, 0.0) + estimates[job.name]
    parts = ", ".join(f"{m} {format_duration(v)}" for m, v in per_method.items())
    return (f"Estimated time: about {format_duration(sum(estimates.values()))} for {len(estimates)} run(s) ({parts}), "
            "from a few training steps, a test batch and a checkpoint of each method and the start of a training "
            "process, timed on this machine just now.")


def demo_command(setting: str, task: str, seeds: list[int], methods: list[str]) -> str:
    """The command line that repeats this demo."""
    return ("selfkd demo" + (f" --task {task}" if task != DEFAULT_TASK else "") + f" --setting {setting}"
            + f" --seeds {','.join(map(str, seeds))}"
            + (f" --methods {','.join(methods)}" if tuple(methods) != TASKS[task].demo.methods else ""))


def run_demo(setting: str = "auto", out: str | Path | None = None, methods=None, data_dir: str | None = None,
             task: str = DEFAULT_TASK, seeds: list[int] | None = None):
    """Train the demo methods of ``task`` (default: the task's :class:`~selfkd.tasks.Demo` methods) with ``seeds``
    (default :data:`SEEDS` of the setting), printing the estimated time first, and compare them; returns
    (:class:`selfkd.sweep.SweepResult`, sweep folder)."""
    import torch

    from .config import make_config
    from .data import load_dataset
    from .report.table import format_duration
    from .sweep import plan, sweep

    began = time.monotonic()
    if setting == "auto":
        setting = "gpu" if torch.cuda.is_available() else "cpu"
    recipe, flags = recipe_path(setting, task), {"data_dir": data_dir}
    cfg = make_config(recipe, flags)
    methods = list(methods or TASKS[task].demo.methods)
    seeds = list(seeds) if seeds is not None else SEEDS[setting]
    try:
        splits = load_dataset(cfg.data.dataset, cfg.data.data_dir, **cfg.data.options)
    except DatasetError as err:
        raise DatasetError(f"{err} {INSTALL_HINT}") from None
    note = describe(setting, cfg, len(splits.train), len(splits.test))
    print(note, flush=True)
    out = Path(out) if out else Path("runs") / f"{TASKS[task].demo.folder}_{setting}"
    jobs = plan(str(recipe), methods, seeds, out, flags)
    configs = {m: make_config(recipe, {**flags, "method": m}, quiet=True) for m in methods}
    estimates = timed_estimates(jobs, configs, splits, time.monotonic() - began)
    result = sweep(str(recipe), methods, seeds, out, flags, note=note, estimates=estimates)
    wall_s = time.monotonic() - began
    if estimates:
        print(f"Demo time: {format_duration(wall_s)} (estimated {format_duration(sum(estimates.values()))} for the "
              "runs).", flush=True)
        record = {"command": demo_command(setting, task, seeds, methods), "regime": note, "setting": setting,
                  "task": task, "methods": methods, "seeds": seeds, "wall_s": wall_s,
                  "estimate_s": sum(estimates.values()), **_outcome(jobs, result, setting)}
        atomic_write(out / DEMO_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return result, out


def timed_estimates(jobs, configs: dict, splits, load_s: float) -> dict[str, float]:
    """:func:`estimate` of the jobs still to run, timed with the CPU threads each run will get, and printed; empty
    when every job is finished."""
    import torch

    from .threads import child_thread_env

    if all(j.action == "skip" for j in jobs):
        return {}
    threads = int(child_thread_env(1)["OMP_NUM_THREADS"])
    print(f"Timing each method on this machine ({threads} CPU thread(s), as each run gets)...", flush=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        estimates = estimate(jobs, configs, splits, load_s)
    finally:
        torch.set_num_threads(previous)
    print(estimate_line(estimates, jobs), flush=True)
    return estimates


def _outcome(jobs, result, setting: str) -> dict:
    """What demo.json records of how the runs went and where they ran."""
    import torch

    from .bench import environment
    from .threads import child_thread_env

    return {"threads_per_run": int(child_thread_env(1)["OMP_NUM_THREADS"]),
            "trained": [j.name for j in jobs if j.action != "skip"],
            "kept": [j.name for j in jobs if j.action == "skip"],
            "failed": [j.name for j in result.failed], "interrupted": result.interrupted,
            "date": time.strftime("%Y-%m-%d"),
            "machine": environment(torch.device("cuda" if setting == "gpu" else "cpu"))}


