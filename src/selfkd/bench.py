"""``selfkd bench``: every method in one process on the same data and model, warm-up first.

Training throughput goes through the engine's own :class:`~selfkd.engine.step.TrainStep` and data
pipeline (resident uint8 data, batched augmentation), so the numbers are what ``selfkd train`` gets.
Ratios measured in one run are what count; absolute figures only mean something on a GPU.
``--task segmentation`` times the segmentation methods on generated scenes (``synthetic_seg``) the same way.
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from .atomic import atomic_write, make_parent
from .config import Config, make_config, parse_override
from .data import load_dataset
from .engine.distributed import resolve_device
from .engine.setup import build_run, run_task
from .engine.step import TrainStep, configure_backends
from .errors import ConfigError, SelfKDError, first_line, short
from .methods import method_class
from .models import create_model
from .runfolder import PROFILE, check_own, open_folder, release
from .tasks import TASKS
from .version import __version__


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, batches, count: int, device: torch.device) -> float:
    """Seconds that ``run`` takes on the next ``count`` of ``batches`` (drawn and augmented), the device synchronised
    at both ends."""
    synchronize(device)
    started = time.perf_counter()
    for _ in range(count):
        run(next(batches))
    synchronize(device)
    return time.perf_counter() - started


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def cycle_batches(loader, count: int):
    """``count`` batches, cycling through epochs as needed."""
    epoch = 0
    while count > 0:
        loader.set_epoch(epoch)
        for batch in loader:
            yield batch
            count -= 1
            if count == 0:
                return
        epoch += 1


def bench_config(args, method: str, options: dict | None = None) -> Config:
    """The config ``selfkd train`` would run: the recipe (``-c``, else the defaults) with the bench's flags, on
    generated data of the bench's shape (content does not matter for speed)."""
    flags = {"method": method, "model": args.model, "batch_size": args.batch_size, "device": args.device}
    cfg = make_config(args.config, {k: v for k, v in flags.items() if v is not None}, quiet=True)
    batch = cfg.data.batch_size
    data = {"dataset": TASKS[args.task].bench.dataset, "eval_batch_size": batch, "loader": "resident",
            "options": {"num_classes": args.num_classes, "train_size": args.train_size, "test_size": batch * 4,
                        "image_size": args.image_size, "channels": args.channels}}
    train = {k: v for k, v in {"amp": args.amp, "compile": args.compile, "channels_last": args.channels_last}.items()
             if v != "auto"}
    model = {"width": args.width} if args.width is not None else {}
    recipe = cfg.to_dict()
    recipe["method"].update(options or {})
    recipe["model"].update(model)
    recipe["data"] = {**recipe["data"], **data, "train_subset": None, "test_subset": None}
    if recipe["data"]["augment"] == "seg_voc":  # a file dataset's augmentation: the generated scenes are in memory
        recipe["data"]["augment"] = "seg_scale_crop_flip"
    recipe["train"].update(train)
    return make_config(recipe, source="the bench's recipe and flags")


def bench_train(cfg: Config, splits, device: torch.device, args, profile_dir: str | None = None) -> dict:
    name = cfg.method.name
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="selfkd-bench-") as tmp:  # files a method reads when it is built
        model = create_model(cfg.model.name, num_classes=splits.num_classes, in_channels=splits.in_channels,
                             **cfg.model.options())
        recipe = cfg.to_dict()
        recipe["method"] = {**method_class(name, run_task(cfg)).example_options(model, Path(tmp)), **recipe["method"]}
        parts = build_run(make_config(recipe, source="the bench's recipe and flags"), splits, device)
    method, step, loader = parts.method, parts.step, parts.train_loader
    method.train()
    method.on_epoch_start(0, cfg.train.epochs)  # the first epoch of the recipe's run
    _reset_peak(device)
    profile_steps = min(args.steps, 20) if profile_dir else 0
    batches = cycle_batches(loader, args.warmup + args.steps + profile_steps)
    images = []  # images per step (partners and views included), from the last batch

    def train(batch) -> None:
        images[:] = [batch.images.shape[0]]
        step(batch.images, batch.targets, batch.index)

    warmup_s = timed(train, batches, args.warmup, device)
    step.reset()
    # Timed in rounds; the median round is reported, so a stray hiccup does not move the result.
    rounds = max(1, min(args.rounds, args.steps))
    sizes = [args.steps // rounds + (i < args.steps % rounds) for i in range(rounds)]
    times = [timed(train, batches, size, device) / size for size in sizes]
    ms = 1000 * statistics.median(times)
    primary_per_step = step.stats.seen / step.stats.steps  # anchors / first views: the images an epoch counts
    if profile_steps:  # after the timed rounds, so the profiler does not slow what was timed
        _profile(step, batches, profile_steps, device, Path(profile_dir) / f"{name}.txt")
    return {
        "method": name,
        "img_per_s": primary_per_step * 1000 / ms,
        "ms_per_step": ms,
        "ms_per_step_spread": [1000 * min(times), 1000 * max(times)],
        "extra_params": method.extra_parameters(),
        "peak_mem_mb": _peak_mb(device),
        "warmup_s": warmup_s,
        "images_per_step": images[0],
        "mean_loss": step.stats.summary().get("train/loss", float("nan")),
    }


def _profile(step: TrainStep, batches, count: int, device: torch.device, path: Path) -> None:
    """Where a step's time goes: the operators and kernels of ``count`` steps by self time, as a table."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(count):
            batch = next(batches)
            step(batch.images, batch.targets, batch.index)
        synchronize(device)
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=40)
    atomic_write(path, lambda tmp: tmp.write_text(f"{count} training steps, per-operator totals\n{table}\n"))


def bench_data(cfg: Config, splits, device: torch.device, args) -> dict:
    """The input pipeline alone: the training loader's batches (gather, augmentation, normalisation)."""
    batches = cycle_batches(build_run(cfg, splits, device).train_loader, args.warmup + args.steps)
    timed(lambda batch: None, batches, args.warmup, device)
    elapsed = timed(lambda batch: None, batches, args.steps, device)
    return {"what": "data", "img_per_s": cfg.data.batch_size * args.steps / elapsed,
            "ms_per_step": 1000 * elapsed / args.steps}


@torch.no_grad()
def bench_eval(cfg: Config, splits, device: torch.device, args) -> dict:
    """Inference alone: the eval model, compiled as the run's settings say, over test batches."""
    from .engine.step import autocast

    torch.manual_seed(0)
    parts = build_run(cfg, splits, device)
    model = parts.method.eval_model().eval()
    mode = parts.cfg.train.compile
    forward = model if mode == "off" else torch.compile(model, mode=None if mode == "default" else mode)
    _reset_peak(device)

    def run(batch) -> None:
        with autocast(device, parts.step.dtype):
            forward(batch.images)

    batches = cycle_batches(parts.test_loader, args.warmup + args.steps)
    timed(run, batches, args.warmup, device)
    elapsed = timed(run, batches, args.steps, device)
    return {"what": "eval", "img_per_s": cfg.data.eval_batch_size * args.steps / elapsed,
            "ms_per_step": 1000 * elapsed / args.steps, "peak_mem_mb": _peak_mb(device)}


def environment(device: torch.device) -> dict:
    """Where a measurement ran (the bench's JSON and the demo's record): versions, device, cores and CPU model."""
    from .threads import cores

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"selfkd": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "platform": platform.platform(), "cores": cores(), "cpu": cpu}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<14}{'img/s':>10}{'ms/step':>10}{'× ce':>8}{'extra params':>14}{'peak MB':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        rel = f"{r['relative_to_ce']:.2f}" if r.get("relative_to_ce") is not None else "-"
        mem = f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") is not None else "-"
        lines.append(f"{r['method']:<14}{r['img_per_s']:>10.0f}{r['ms_per_step']:>10.2f}{rel:>8}"
                     f"{r['extra_params']:>14,}{mem:>10}")
    return "\n".join(lines)


def method_options(items: list[str]) -> dict[str, dict]:
    """``--set frskd.alpha=1`` -> {"frskd": {"alpha": 1}}."""
    out: dict[str, dict] = {}
    for item in items:
        key, value = parse_override(item)
        if "." not in key:
            raise ConfigError(f"bench --set expects METHOD.OPTION=VALUE (e.g. frskd.sla=true), got {short(item)}.")
        method, option = key.split(".", 1)
        out.setdefault(method, {})[option] = value
    return out


def run_bench(args) -> int:
    """``selfkd bench`` with its parsed flags ``args`` (see :mod:`selfkd.commands.bench`): time every method in
    this process, print the table (and write ``--json``; ``--profile``: a folder selfkd made for profiles, or an
    empty one)."""
    device = resolve_device(args.device)
    configure_backends(deterministic=False)  # the same kernel choices as `selfkd train`
    configs = _configs(args, device)
    splits = load_dataset(configs["ce"].data.dataset, **configs["ce"].data.options)
    env = environment(device)
    t = configs["ce"].resolved(device.type, distributed=False).train
    print(f"selfkd bench on {env.get('gpu', env['device'])}: {configs['ce'].model.name}, {args.task}, "
          f"{args.image_size}² images, batch {configs['ce'].data.batch_size}, {args.steps} timed "
          f"steps after {args.warmup} warm-up, amp {t.amp}, compile {t.compile}, channels_last {t.channels_last}",
          file=sys.stderr)
    if args.json:  # before the timing, not after it
        make_parent(Path(args.json), "--json")
    profile = Path(args.profile) if args.profile else None
    lock = open_folder(profile, PROFILE, lambda marked: check_own(profile, PROFILE, marked)) if profile else None
    try:
        result = _measure(args, configs, splits, device)
    finally:
        if lock is not None:
            release(lock)
    result.update(settings=_settings(args, t), environment=env)
    if args.json:
        atomic_write(Path(args.json), lambda tmp: tmp.write_text(json.dumps(result, indent=2)),
                     "The results above were not saved; free some space or pass --json with a writable place.")
    return 0


def _measure(args, configs: dict[str, Config], splits, device: torch.device) -> dict:
    """What ``args.what`` asks for; a batch that does not fit the device's memory (or cannot run) is refused with
    what to lower."""
    try:
        if args.what == "train":
            return {"what": "train", **_train_all(configs, splits, device, args)}
        row = (bench_data if args.what == "data" else bench_eval)(configs["ce"], splits, device, args)
    except (RuntimeError, MemoryError) as err:  # torch's out-of-memory errors are RuntimeErrors
        raise ConfigError(f"ce cannot run {configs['ce'].data.batch_size} images of {args.image_size}² on {device} "
                          f"({first_line(err, limit=200)}); lower --image-size, --batch-size or --width.") from None
    print(json.dumps(row, indent=2))
    return {"what": args.what, "results": [row]}


def _configs(args, device: torch.device) -> dict[str, Config]:
    """The config of every method to time (ce first), after filling the flags not given from the task's bench
    defaults (:attr:`selfkd.tasks.Task.bench`); every mistake is refused before anything runs."""
    options = method_options(args.overrides)
    recipe = make_config(args.config, quiet=True)
    args.task = args.task or run_task(recipe)  # the recipe's dataset's (without a recipe: classification)
    defaults = TASKS[args.task].bench
    for key in ("methods", "num_classes", "image_size") + (() if args.config else ("model", "batch_size")):
        if getattr(args, key) is None:
            setattr(args, key, getattr(defaults, key))
    names = [m.strip() for m in args.methods.split(",") if m.strip()] if args.what == "train" else ["ce"]
    if "ce" not in names:
        names.insert(0, "ce")
    if args.train_size is None:  # enough images for real epochs on a GPU where the task says so, else the timed steps
        batch_size = args.batch_size or recipe.data.batch_size
        gpu_size = defaults.gpu_train_size if device.type == "cuda" else None
        args.train_size = gpu_size or batch_size * (args.steps + args.warmup)
    configs = {name: bench_config(args, name, options.get(name)) for name in names}
    for name in names:
        method_class(name, args.task)
    return configs


def _train_all(configs: dict[str, Config], splits, device: torch.device, args) -> dict:
    """Time each method's training step (after an untimed ce run that warms clocks and caches); a method that fails
    is reported and the others go on. Prints the table; returns its rows and the failures."""
    rows, failed = [], []
    if args.profile and device.type == "cuda":
        # Start the profiler once before any CUDA graph is captured: graphs captured before its first use
        # can fail to profile (pytorch/pytorch#100441).
        with torch.profiler.profile():
            pass
    bench_train(configs["ce"], splits, device, args)  # untimed: clocks, cuDNN autotuning, compile caches
    for name, cfg in configs.items():
        try:
            rows.append(bench_train(cfg, splits, device, args, args.profile))
        except SelfKDError:
            raise
        except Exception as err:  # one broken method must not hide the others' numbers
            print(f"  {name}: FAILED ({type(err).__name__}: {first_line(err)})", file=sys.stderr)
            failed.append({"method": name, "error": f"{type(err).__name__}: {err}"})
            continue
        print(f"  {name}: {rows[-1]['img_per_s']:.0f} img/s", file=sys.stderr)
    ce = next(r for r in rows if r["method"] == "ce")
    for r in rows:
        r["relative_to_ce"] = r["ms_per_step"] / ce["ms_per_step"]
    print(format_table(rows))
    return {"results": rows, "failed": failed}


def _settings(args, resolved) -> dict:
    keys = ["config", "task", "model", "width", "batch_size", "steps", "warmup", "rounds", "num_classes", "image_size",
            "train_size", "overrides", "profile"]
    return {**{k: getattr(args, k) for k in keys},
            **{k: getattr(resolved, k) for k in ("amp", "compile", "channels_last")}}


