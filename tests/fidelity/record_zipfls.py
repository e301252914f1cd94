"""Record the Zipf's LS fixtures from the authors' code (megvii-research/zipfls): ``train(...)`` of
``pytorch_zipfls/train.py``.

    python tests/fidelity/record_zipfls.py --official /path/to/zipfls [--out FOLDER]

Runs the official ``train(train_loader, args, net, criterion, optimizer, epoch, ...)`` with its ``zipf_loss``
(votes on the CPU with SciPy's ``rankdata``) on its ``CIFAR_ResNet18``, with the arguments of its CIFAR-100 ResNet-18
command (``--loss_lambda 0.1 --dense --upsample bilinear``; ``rank_zipf``, hard ranks, power 1, no mask, one
layer), unmodified, on the CPU for two batches; float64 with SGD steps, float32 (and float64 again) with the
weights fixed (``recording.dtype_runs``). The network pools with ``AvgPool2d(4)``: 32×32 images. Its heads
``linear2``/``linear3`` are computed but in no loss (no gradient); selfkd does not create them.

What differs from a run of ``train.py``, and why: ``main`` (arguments, data, model, optimizer, logging) is not run:
the recorder supplies the arguments, the batches, the optimizer (SGD lr 0.01, momentum 0.9, weight decay 1e-4, as
its ``--decay``), a TensorBoard writer and a log that do nothing, and ``utils.accuracy`` from its own file (its
``utils`` module imports GitPython through ``settings``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "megvii-research/zipfls"
K, B, SIZE, LAMBDA = 10, 4, 32, 0.1
WEIGHT_SEED = 8
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
PLAN = layouts.plan("plain", (2,), B, K, SIZE)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official ``train`` over the planned batches: (official tensor specs, [(batch, step record), ...])."""
    folder = checkout / "pytorch_zipfls"
    with scripts.official_run(folder, ["cifar_models", "losses", "zipf_utils"], dtype):
        import cifar_models
        from losses import zipf_loss
        net = cifar_models.load_model("CIFAR_ResNet18", K, upsample="bilinear")
        harness.fill_(net, WEIGHT_SEED)
        optimizer = scripts.sgd(net.named_parameters(), settings, OPTIMIZER)
        utils = recording.official_functions(folder / "utils.py", ["accuracy"], {"torch": torch})
        namespace = {"torch": torch, "F": F, "time": time, "zipf_loss": zipf_loss,
                     "utils": argparse.Namespace(accuracy=utils["accuracy"])}
        recording.official_functions(folder / "train.py", ["train"], namespace)
        loader = [layouts.tensors(entry, dtype)[:2] for entry in PLAN]
        namespace["train"](loader, argparse.Namespace(), net, torch.nn.CrossEntropyLoss(), optimizer, 0,
                           scripts.NoProgress(), lambda *a: None, LAMBDA, False, "rank_zipf", True, "hard", False,
                           1.0, B, alpha=0.1, upsample="bilinear", deeplayer=1, left_bound=0.001, right_bound=1.0,
                           loss_type="ce")
        recorded = scripts.records(optimizer, {"ce": "xent_loss", "zipf": lambda local: LAMBDA * local["kd_loss"]},
                                   total="total_loss")
    return harness.floating_specs(net), list(zip(PLAN, recorded))


def base(checkout: Path) -> dict:
    return scripts.fixture_base("zipf_ls-preact_resnet18", "zipf_ls", "CE and the Zipf KL on dense votes, 2 steps",
                                REPOSITORY, checkout, "pytorch_zipfls/train.py: train(...), --loss_lambda 0.1 "
                                "--dense --upsample bilinear", side="authors.zipf_ls", model="preact_resnet18",
                                weight_seed=WEIGHT_SEED, shapes={"num_classes": K}, epochs=1)


main = scripts.recorder_main(__doc__, "pytorch_zipfls/train.py", base, run, OPTIMIZER)


if __name__ == "__main__":
    main()
