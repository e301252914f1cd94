"""``selfkd bench``: every method in one process on the same data and model, warm-up first.

Training throughput goes through the engine's own :class:`~selfkd.engine.step.TrainStep` and data
pipeline (resident uint8 data, batched augmentation), so the numbers are what ``selfkd train`` gets.
Ratios measured in one run are what count; absolute figures only mean something on a GPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import __version__
from .config import DataConfig, parse_override
from .data.datasets import DatasetSplits, ImageTensors
from .data.pipeline import build_test_loader, build_train_loader
from .engine.distributed import resolve_device
from .engine.step import TrainStep, build_optimizer, configure_backends
from .errors import ConfigError, SelfKDError
from .methods import create_method, per_sample_args
from .models import create_model


def synthetic_cifar(num_train: int, num_test: int, num_classes: int, size: int, channels: int = 3) -> DatasetSplits:
    """Random uint8 images shaped like CIFAR (content does not matter for speed)."""
    gen = torch.Generator().manual_seed(0)

    def split(n):
        return ImageTensors(torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen),
                            torch.randint(0, num_classes, (n,), generator=gen))

    return DatasetSplits("bench", split(num_train), split(num_test), num_classes, channels,
                         (0.5,) * channels, (0.25,) * channels, size, "crop_flip")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _batches(loader, count: int):
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


def bench_train(method_name: str, options: dict, args, splits: DatasetSplits, device: torch.device,
                profile_dir: str | None = None) -> dict:
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
                         **args.model_options)
    with tempfile.TemporaryDirectory(prefix="selfkd-bench-") as tmp:  # tfkd_self reads its teacher when built
        if method_name == "tfkd_self" and "teacher_weights" not in options:
            options = dict(options, teacher_weights=_stand_in_teacher(model, args, Path(tmp)))
        method = create_method(method_name, model, num_classes=splits.num_classes, **options,
                               **per_sample_args(method_name, len(splits.train))).to(device)
    if args.channels_last:
        method.to(memory_format=torch.channels_last)
    method.train()
    method.on_epoch_start(0, 1)
    data_cfg = DataConfig(dataset="bench", batch_size=args.batch_size, eval_batch_size=args.batch_size)
    loader = build_train_loader(splits, data_cfg, method.data_needs, device, seed=0)
    optimizer = build_optimizer(method, 0.01, 0.9, False, 5e-4, False, device)
    step = TrainStep(method, optimizer, device, args.amp, args.compile)
    _reset_peak(device)
    profile_steps = min(args.steps, 20) if profile_dir else 0
    batches = _batches(loader, args.warmup + args.steps + profile_steps)
    started = time.perf_counter()
    for _ in range(args.warmup):
        batch = next(batches)
        step(batch.images, batch.targets, batch.index)
    _sync(device)
    warmup_s = time.perf_counter() - started
    step.reset()
    # Timed in rounds; the median round is reported, so a stray hiccup does not move the result.
    rounds = max(1, min(args.rounds, args.steps))
    sizes = [args.steps // rounds + (i < args.steps % rounds) for i in range(rounds)]
    times = []
    for size in sizes:
        started = time.perf_counter()
        for _ in range(size):
            batch = next(batches)
            step(batch.images, batch.targets, batch.index)
        _sync(device)
        times.append((time.perf_counter() - started) / size)
    ms = 1000 * statistics.median(times)
    primary_per_step = step.seen / step.steps  # anchors / first views: the images an epoch counts
    if profile_steps:  # after the timed rounds, so the profiler does not slow what was timed
        _profile(step, batches, profile_steps, device, Path(profile_dir) / f"{method_name}.txt")
    return {
        "method": method_name,
        "img_per_s": primary_per_step * 1000 / ms,
        "ms_per_step": ms,
        "ms_per_step_spread": [1000 * min(times), 1000 * max(times)],
        "extra_params": method.extra_parameters(),
        "peak_mem_mb": _peak_mb(device),
        "warmup_s": warmup_s,
        "images_per_step": batch.images.shape[0],
        "mean_loss": step.summary().get("train/loss", float("nan")),
    }


def _profile(step: TrainStep, batches, count: int, device: torch.device, path: Path) -> None:
    """Where a step's time goes: the operators and kernels of ``count`` steps by self time, as a table."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(count):
            batch = next(batches)
            step(batch.images, batch.targets, batch.index)
        _sync(device)
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=40)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{count} training steps, per-operator totals\n{table}\n")


def _stand_in_teacher(model, args, folder: Path) -> str:
    """tfkd_self needs a trained teacher file; for timing, the untrained student's weights do."""
    from .weights import save_weights

    path = folder / "teacher.safetensors"
    save_weights(path, model, {"model": args.model, "num_classes": model.num_classes,
                               "model_options": args.model_options})
    return str(path)


def bench_data(args, splits: DatasetSplits, device: torch.device) -> dict:
    from .methods.base import DataNeeds

    data_cfg = DataConfig(dataset="bench", batch_size=args.batch_size)
    loader = build_train_loader(splits, data_cfg, DataNeeds(), device, seed=0)
    for _ in _batches(loader, args.warmup):
        pass
    _sync(device)
    started = time.perf_counter()
    for batch in _batches(loader, args.steps):
        pass
    _sync(device)
    elapsed = time.perf_counter() - started
    return {"what": "data", "img_per_s": args.batch_size * args.steps / elapsed,
            "ms_per_step": 1000 * elapsed / args.steps}


@torch.no_grad()
def bench_eval(args, splits: DatasetSplits, device: torch.device) -> dict:
    from .engine.step import amp_dtype, autocast

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=splits.num_classes, in_channels=splits.in_channels,
                         **args.model_options).to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = model if args.compile == "off" else torch.compile(model, mode=None if args.compile == "default" else args.compile)
    loader = build_test_loader(splits, DataConfig(dataset="bench", eval_batch_size=args.batch_size), device)
    dtype = amp_dtype(args.amp, device)
    _reset_peak(device)

    def run(count):
        for batch in _batches(loader, count):
            with autocast(device, dtype):
                forward(batch.images)

    run(args.warmup)
    _sync(device)
    started = time.perf_counter()
    run(args.steps)
    _sync(device)
    elapsed = time.perf_counter() - started
    return {"what": "eval", "img_per_s": args.batch_size * args.steps / elapsed,
            "ms_per_step": 1000 * elapsed / args.steps, "peak_mem_mb": _peak_mb(device)}


def environment(device: torch.device) -> dict:
    env = {"selfkd": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "platform": platform.platform()}
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
            raise ConfigError(f"bench --set expects METHOD.OPTION=VALUE (e.g. frskd.sla=true), got '{item}'.")
        method, option = key.split(".", 1)
        out.setdefault(method, {})[option] = value
    return out


def run(args) -> int:
    device = resolve_device(args.device)
    configure_backends(deterministic=False)  # the same kernel choices as `selfkd train`
    args.channels_last = device.type == "cuda" if args.channels_last == "auto" else args.channels_last == "on"
    if args.compile == "auto":
        args.compile = "reduce-overhead" if device.type == "cuda" else "off"
    args.model_options = {} if args.width is None else {"width": args.width}
    num_train = args.train_size or (50_000 if device.type == "cuda" else args.batch_size * (args.steps + args.warmup))
    splits = synthetic_cifar(num_train, args.batch_size * 4, args.num_classes, args.image_size, args.channels)
    env = environment(device)
    print(f"selfkd bench on {env.get('gpu', env['device'])}: {args.model}, batch {args.batch_size}, {args.steps} timed "
          f"steps after {args.warmup} warm-up, amp {args.amp}, compile {args.compile}, channels_last {args.channels_last}",
          file=sys.stderr)
    if args.what == "train":
        options = method_options(args.overrides)
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        if "ce" not in names:
            names.insert(0, "ce")
        rows, failed = [], []
        if args.profile and device.type == "cuda":
            # Start the profiler once before any CUDA graph is captured: graphs captured before its first use
            # can fail to profile (pytorch/pytorch#100441).
            with torch.profiler.profile():
                pass
        bench_train("ce", {}, args, splits, device)  # untimed: clocks, cuDNN autotuning, compile caches
        for name in names:
            try:
                rows.append(bench_train(name, options.get(name, {}), args, splits, device, args.profile))
            except SelfKDError:
                raise
            except Exception as err:  # one broken method must not hide the others' numbers
                print(f"  {name}: FAILED ({type(err).__name__}: {str(err).splitlines()[0][:300]})", file=sys.stderr)
                failed.append({"method": name, "error": f"{type(err).__name__}: {err}"})
                continue
            print(f"  {name}: {rows[-1]['img_per_s']:.0f} img/s", file=sys.stderr)
        ce = next(r for r in rows if r["method"] == "ce")
        for r in rows:
            r["relative_to_ce"] = r["ms_per_step"] / ce["ms_per_step"]
        print(format_table(rows))
        result = {"what": "train", "settings": _settings(args), "environment": env, "results": rows, "failed": failed}
    else:
        row = bench_data(args, splits, device) if args.what == "data" else bench_eval(args, splits, device)
        print(json.dumps(row, indent=2))
        result = {"what": args.what, "settings": _settings(args), "environment": env, "results": [row]}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _settings(args) -> dict:
    keys = ["model", "width", "batch_size", "steps", "warmup", "rounds", "amp", "compile", "channels_last", "num_classes",
            "image_size", "overrides", "profile"]
    return {k: getattr(args, k) for k in keys}


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure training speed and memory of several methods in one run")
    p.add_argument("--methods", default="ce,dsr,drg,lightskd,frskd", help="comma-separated (ce is always included)")
    p.add_argument("--model", default="cifar_resnet18")
    p.add_argument("--width", type=_at_least(1), help="base width for CIFAR ResNets (smaller for quick CPU runs)")
    p.add_argument("--batch-size", type=_at_least(1), default=128)
    p.add_argument("--steps", type=_at_least(1), default=50, help="timed steps per method")
    p.add_argument("--warmup", type=_at_least(0), default=10, help="untimed steps first (compilation happens here)")
    p.add_argument("--rounds", type=_at_least(1), default=5, help="timed steps are split into rounds; the median round counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--compile", default="auto", choices=["auto", "off", "default", "reduce-overhead", "max-autotune"])
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--num-classes", type=_at_least(2), default=100)
    p.add_argument("--image-size", type=_at_least(1), default=32)
    p.add_argument("--channels", type=_at_least(1), default=3)
    p.add_argument("--train-size", type=_at_least(1), help="synthetic training images (default 50,000 on GPU)")
    p.add_argument("--what", default="train", choices=["train", "data", "eval"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.OPTION=VALUE")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--profile", metavar="DIR", help="also profile up to 20 more steps per method (after timing) and "
                   "write each method's operator/kernel table to DIR/METHOD.txt")
    p.set_defaults(func=run)
