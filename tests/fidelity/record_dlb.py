"""Record the DLB fixtures from the authors' code (Meta-knowledge-Lab/DLB): ``train_one_epoch`` of its ``dlb.py``.

    python tests/fidelity/record_dlb.py --official /path/to/DLB [--out FOLDER]

Runs the official ``train_one_epoch(model, optimizer, train_loader, alpha, pre_data, pre_out)``, unmodified, on the
CPU for two epochs of two batches of two views each, carrying ``pre_data``/``pre_out`` across the epoch boundary as
its ``train`` does (so only the very first step is plain CE); float64 with SGD steps, float32 (and float64 again)
with the weights fixed (``recording.dtype_runs``). Model: its ``resnet32`` (three stages of 16/32/64 channels).
The script has no defaults for T and α: the fixture uses T = 3, α = 1 (selfkd's, the paper's).

What differs from a run of ``dlb.py``, and why: its module level and ``train`` (argument parsing, data, model,
optimizer, epochs, evaluation) are not run: the recorder supplies ``args`` (``T``), the batches (``imgs`` of shape
``(B, 2, C, H, W)``, as its two-view loader gives) and the optimizer (SGD lr 0.01, momentum 0.9, weight decay 5e-4,
without its Nesterov). Recorded terms: ``ce`` (its ``ce_loss``; the first step's ``loss``) and ``kd`` =
α·``dml_loss``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "Meta-knowledge-Lab/DLB"
K, B, SIZE, T, ALPHA = 10, 4, 16, 3.0, 1.0
WEIGHT_SEED = 6
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
PLAN = layouts.plan("views", (2, 2), B, K, SIZE)


def batch(entry: dict, dtype: torch.dtype):
    """(imgs, label) as its loader yields them: the two views stacked on dim 1."""
    x, y, _ = layouts.tensors(entry, dtype)
    return torch.stack([x[:B], x[B:]], dim=1), y


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official ``train_one_epoch`` for each epoch: (official tensor specs, [(batch, step record), ...])."""
    with scripts.official_run(checkout, ["models", "utils"], dtype):
        import utils
        from models import resnet32
        net = resnet32(num_classes=K)
        harness.fill_(net, WEIGHT_SEED)
        optimizer = scripts.sgd(net.named_parameters(), settings, OPTIMIZER)
        namespace = {"torch": torch, "F": F, "AverageMeter": utils.AverageMeter, "accuracy": utils.accuracy,
                     "args": argparse.Namespace(T=T)}
        recording.official_functions(checkout / "dlb.py", ["train_one_epoch"], namespace)
        pre_data = pre_out = None
        for epoch in range(2):
            loader = [batch(entry, dtype) for entry in PLAN if entry["epoch"] == epoch]
            _, _, pre_data, pre_out = namespace["train_one_epoch"](net, optimizer, loader, ALPHA, pre_data, pre_out)
        recorded = scripts.records(optimizer, {"ce": lambda local: local.get("ce_loss", local["loss"]),
                                               "kd": lambda local: ALPHA * local.get("dml_loss", 0.0)})
    return harness.floating_specs(net), list(zip(PLAN, recorded))


def base(checkout: Path) -> dict:
    return scripts.fixture_base("dlb-cifar_resnet32", "dlb", "CE over both halves and the KD from the last "
                                "mini-batch, 2 epochs of 2 steps (the cache across the epoch boundary)", REPOSITORY,
                                checkout, "dlb.py: train_one_epoch(...), T 3, alpha 1", side="authors.dlb",
                                model={"blocks": [5, 5, 5], "width": 16}, weight_seed=WEIGHT_SEED, layout="views",
                                shapes={"num_classes": K}, epochs=2)


main = scripts.recorder_main(__doc__, "dlb.py", base, run, OPTIMIZER)


if __name__ == "__main__":
    main()
