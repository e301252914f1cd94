"""``selfkd demo`` (``make demo``): the demo methods of a task on real data, then a comparison."""
from __future__ import annotations

from ..tasks import TASKS
from .flags import parse_list


def register(subparsers) -> None:
    cls, seg = TASKS["classification"].demo, TASKS["segmentation"].demo
    p = subparsers.add_parser("demo", help=f"train {', '.join(cls.methods)} on Fashion-MNIST and compare them "
                                           f"(--task segmentation: {' and '.join(seg.methods)} on fmnist_scenes)",
                              description="Train the demo methods on real Fashion-MNIST (CPU: a 1,000-image subset for "
                                          "40 epochs, one seed; GPU: the full data, three seeds) and print a "
                                          "comparison table with each gain's 95 % interval; "
                                          "the report (plots, index.html) goes to <out>/report. With --task "
                                          "segmentation: ce and frskd segment scenes composed from Fashion-MNIST.")
    p.add_argument("--task", choices=list(TASKS), default="classification",
                   help="segmentation: ce and frskd on fmnist_scenes, Fashion-MNIST items composed into scenes "
                        "(default %(default)s)")
    p.add_argument("--setting", choices=["auto", "cpu", "gpu"], default="auto",
                   help="recipe configs/demo/fashion_mnist.yaml (cpu) or fashion_mnist_gpu.yaml (gpu), for "
                        "segmentation fmnist_scenes[_gpu].yaml; auto: gpu when CUDA is available")
    p.add_argument("--out", help="sweep folder (default runs/demo_<setting>, runs/demo_segmentation_<setting>)")
    p.add_argument("--methods", help=f"comma-separated methods (default {','.join(cls.methods)}; "
                                     f"segmentation: {','.join(seg.methods)})")
    p.add_argument("--seeds", help="comma-separated seeds (default 0 on a CPU, 0,1,2 on a GPU); with two or more "
                                   "the report gives each gain over ce a 95 %% interval")
    p.add_argument("--data-dir", help="folder holding fashion-mnist (default: ./data, /usr/share/datasets)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo
    from ..sweep import print_outcome

    methods = parse_list(args.methods, "methods") if args.methods is not None else None
    seeds = parse_list(args.seeds, "seeds", int) if args.seeds is not None else None
    result, out = run_demo(args.setting, args.out, methods, args.data_dir, args.task, seeds)
    return print_outcome(result, out)
