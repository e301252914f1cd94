"""``selfkd list models | methods | datasets``."""
from __future__ import annotations

from ..tasks import TASK_NAMES, TASKS


def register(subparsers) -> None:
    p = subparsers.add_parser("list", help="list methods or datasets (one per line) or models (task, parameters)")
    p.add_argument("what", choices=["models", "methods", "datasets"])
    p.add_argument("--task", choices=TASK_NAMES,
                   help="methods: of this task (default classification); models, datasets: only this task's")
    p.set_defaults(func=run)


def run(args) -> int:
    """Names one per line (methods and datasets of one task); models with their task and parameter count (at the
    task's usual class count: CIFAR-100's 100, VOC's 21)."""
    from ..data.datasets import dataset_task, list_datasets
    from ..methods import list_methods
    from ..models import count_parameters, list_models

    if args.what == "methods":
        print("\n".join(list_methods(args.task) if args.task else list_methods()))
    elif args.what == "datasets":
        print("\n".join(n for n in list_datasets() if args.task in (None, dataset_task(n))))
    else:
        for task in [args.task] if args.task else TASK_NAMES:
            for name in list_models(task):
                print(f"{name:<28}{task:<16}{count_parameters(name, TASKS[task].listed_classes):>14,}")
    return 0
