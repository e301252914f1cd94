"""``selfkd eval``: a run (its last checkpoint) or an exported weights file on a test set."""
from __future__ import annotations

import json

from ..errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run or a weights file on a test set")
    p.add_argument("--run", help="run folder (uses its config and last checkpoint)")
    p.add_argument("--weights", help="model.safetensors exported by selfkd")
    p.add_argument("--model", help="backbone name (default: read from the weights file)")
    p.add_argument("--dataset")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine.evaluation import evaluate_run, evaluate_weights

    if args.run and args.weights:
        raise ConfigError("Give selfkd eval either --run RUN_DIR or --weights FILE, not both.")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give the number of test images per batch (at least 1), "
                          "or leave it out for the run's own.")
    if args.run:
        result = evaluate_run(args.run, device=args.device, data_dir=args.data_dir, batch_size=args.batch_size,
                              dataset=args.dataset, model=args.model)
    elif args.weights and args.dataset:
        result = evaluate_weights(args.weights, args.dataset, model=args.model, device=args.device,
                                  data_dir=args.data_dir, batch_size=args.batch_size)
    else:
        raise ConfigError("selfkd eval needs --run RUN_DIR, or --weights FILE --dataset NAME [--model NAME].")
    print(json.dumps(result, indent=2))
    return 0
