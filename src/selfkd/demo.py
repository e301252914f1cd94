"""``selfkd demo`` (``make demo``): ce, lightskd, frskd and the cskd baseline on real Fashion-MNIST,
then a comparison table and report.

The recipes are files, not code: ``configs/demo/fashion_mnist.yaml`` (CPU: a subset and a few epochs,
about seven minutes on two idle cores) and ``configs/demo/fashion_mnist_gpu.yaml`` (full data, more epochs),
chosen automatically by whether CUDA is available. The runs go through :func:`selfkd.sweep.sweep`, so
running the demo again skips what is finished and resumes what was interrupted.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, DatasetError

METHODS = ("ce", "lightskd", "frskd", "cskd")
RECIPES = {"cpu": "fashion_mnist.yaml", "gpu": "fashion_mnist_gpu.yaml"}
INSTALL_HINT = ("To get Fashion-MNIST: `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; `make fashion-mnist` "
                "does this), or download the four *-ubyte.gz files from github.com/zalandoresearch/fashion-mnist "
                "into ./data/fashion-mnist/ (or pass --data-dir).")


def recipe_path(setting: str) -> Path:
    """The demo recipe in the source tree's configs/demo (or ./configs/demo)."""
    name = RECIPES[setting]
    for folder in (Path(__file__).resolve().parents[2] / "configs" / "demo", Path("configs") / "demo"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"The demo recipe configs/demo/{name} was not found next to the selfkd sources or in "
                      "./configs/demo. Run the demo from a checkout of the selfkd repository (`make demo`).")


def describe(setting: str, cfg, num_train: int, num_test: int) -> str:
    """The line that says which setting ran: data sizes, epochs, model, device."""
    d, t = cfg.data, cfg.train
    train = f"{min(d.train_subset, num_train):,} of {num_train:,}" if d.train_subset else f"all {num_train:,}"
    test = f"{min(d.test_subset, num_test):,} of {num_test:,}" if d.test_subset else f"all {num_test:,}"
    width = cfg.model.options().get("width")
    return (f"Demo setting '{setting}': Fashion-MNIST, {train} training images, {test} test images, {t.epochs} epochs, "
            f"{cfg.model.name}" + (f" (width {width})" if width else "") + f", batch {d.batch_size}, "
            f"device {t.device}.")


def run_demo(setting: str = "auto", out: str | Path | None = None, methods=METHODS, data_dir: str | None = None):
    """Train the demo methods (one seed) and compare them; returns (:class:`selfkd.sweep.SweepResult`, sweep folder)."""
    import torch

    from .config import load_config
    from .data import load_dataset
    from .sweep import sweep

    if setting == "auto":
        setting = "gpu" if torch.cuda.is_available() else "cpu"
    recipe = recipe_path(setting)
    cfg = load_config(recipe, extra={"data.data_dir": data_dir} if data_dir else None)
    try:
        splits = load_dataset(cfg.data.dataset, cfg.data.data_dir, **cfg.data.options)
    except DatasetError as err:
        raise DatasetError(f"{err} {INSTALL_HINT}") from None
    note = describe(setting, cfg, len(splits.train), len(splits.test))
    print(note, flush=True)
    out = Path(out) if out else Path("runs") / f"demo_{setting}"
    return sweep(str(recipe), list(methods), [cfg.seed], out, {"data_dir": data_dir}, note=note), out


def cmd_demo(args) -> int:
    from .sweep import parse_list, print_outcome

    result, out = run_demo(args.setting, args.out, parse_list(args.methods, "methods"), args.data_dir)
    return print_outcome(result, out)


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train ce, lightskd, frskd and cskd on Fashion-MNIST and compare them",
                              description="Train the demo methods on real Fashion-MNIST (CPU: a subset, about seven "
                                          "minutes on two idle cores; GPU: the full data) and print a comparison table; "
                                          "the report (plots, index.html) goes to <out>/report.")
    p.add_argument("--setting", choices=["auto", "cpu", "gpu"], default="auto",
                   help="recipe configs/demo/fashion_mnist.yaml (cpu) or fashion_mnist_gpu.yaml (gpu); "
                        "auto: gpu when CUDA is available")
    p.add_argument("--out", help="sweep folder (default runs/demo_<setting>)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default %(default)s)")
    p.add_argument("--data-dir", help="folder holding fashion-mnist (default: ./data, /usr/share/datasets)")
    p.set_defaults(func=cmd_demo)
