"""``selfkd bench``: training (or data, or evaluation) speed and memory of several methods in one process."""
from __future__ import annotations

import argparse

from ..tasks import TASKS


def _on_off(text: str):
    return {"on": True, "off": False}.get(text, text)


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure training speed and memory of several methods in one run")
    p.add_argument("--task", choices=list(TASKS), help="classification or segmentation (default: the "
                   "recipe's, else classification); sets the generated data and the defaults below")
    p.add_argument("--methods", help="comma-separated (ce is always included; default ce,dsr,drg,lightskd,frskd, "
                                     "segmentation: ce,frskd)")
    p.add_argument("-c", "--config", help="recipe whose optimizer, model and method settings to run "
                                              "(its dataset is replaced by generated data of the bench's shape)")
    p.add_argument("--model", help="backbone name (default: the recipe's, else cifar_resnet18; segmentation: "
                                   "frskd_seg_effb0)")
    p.add_argument("--width", type=_at_least(1), help="base width for CIFAR ResNets (smaller for quick CPU runs)")
    p.add_argument("--batch-size", type=_at_least(1), help="default: the recipe's, else 128 (segmentation: 16)")
    p.add_argument("--steps", type=_at_least(1), default=50, help="timed steps per method")
    p.add_argument("--warmup", type=_at_least(0), default=10, help="untimed steps first (compilation happens here)")
    p.add_argument("--rounds", type=_at_least(1), default=5,
                   help="timed steps are split into rounds; the median round counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--compile", default="auto", choices=["auto", "off", "default", "reduce-overhead", "max-autotune"])
    p.add_argument("--channels-last", default="auto", type=_on_off, choices=["auto", True, False],
                   help="auto, on or off")
    p.add_argument("--num-classes", type=_at_least(2), help="default 100 (segmentation: 21)")
    p.add_argument("--image-size", type=_at_least(1), help="default 32 (segmentation: 512, FRSKD's crop)")
    p.add_argument("--channels", type=_at_least(1), default=3)
    p.add_argument("--train-size", type=_at_least(1), help="generated training images (default: 50,000 on a GPU for "
                                                           "classification, else as many as the timed steps use)")
    p.add_argument("--what", default="train", choices=["train", "data", "eval"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.OPTION=VALUE")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--profile", metavar="DIR", help="also profile up to 20 more steps per method (after timing) and "
                   "write each method's operator/kernel table to DIR/METHOD.txt")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..bench import run_bench

    return run_bench(args)
