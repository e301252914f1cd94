"""Record the PS-KD fixtures from the authors' code (lgcnsai/PS-KD-Pytorch): ``train(...)`` of its ``main.py``.

    python tests/fidelity/record_pskd.py --official /path/to/PS-KD-Pytorch [--out FOLDER]

Runs the official ``train(all_predictions, ..., epoch, alpha_t, train_loader, args)`` with its
``Custom_CrossEntropy_PSKD``, unmodified, on the CPU for two epochs of two batches of dataset-indexed images (the
prediction table written in epoch 0 is read in epoch 1), with ``alpha_t = alpha_T·(epoch+1)/end_epoch`` as its
``main_worker`` computes it (end_epoch 4); float64 with SGD steps, float32 (and float64 again) with the weights
fixed (``recording.dtype_runs``). Its ``CIFAR_ResNet18_preActBasic`` pools with ``F.avg_pool2d(out, 4)``, so the
images are 32×32.

What differs from a run of ``main.py``, and why: ``main_worker`` (data, model, optimizer, the epoch loop) is not
run: the recorder supplies ``args`` (``PSKD`` on, no GPU, not distributed), the table, the batches and the optimizer
(SGD lr 0.01, momentum 0.9, weight decay 5e-4, without the official Nesterov and lr 0.1); ``progress_bar`` prints
nothing. The table (``dtype=torch.float32`` in ``main_worker``) takes the run's dtype: a float32 table refuses the
float64 run's predictions (index-put needs equal dtypes).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "lgcnsai/PS-KD-Pytorch"
K, B, SIZE, EPOCHS = 10, 4, 32, 4
WEIGHT_SEED = 4
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
PLAN = layouts.plan("indexed", (2, 2), B, K, SIZE)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official ``train`` for each epoch: (official tensor specs, [(batch, step record), ...])."""
    with scripts.official_run(checkout, ["models", "loss", "utils"], dtype):
        from loss.pskd_loss import Custom_CrossEntropy_PSKD
        from models.preact_resnet import CIFAR_ResNet18_preActBasic
        from utils.AverageMeter import AverageMeter
        net = CIFAR_ResNet18_preActBasic(num_classes=K)
        harness.fill_(net, WEIGHT_SEED)
        optimizer = scripts.sgd(net.named_parameters(), settings, OPTIMIZER)
        args = argparse.Namespace(PSKD=True, gpu=None, distributed=False, rank=0, alpha_T=0.8, end_epoch=EPOCHS)
        namespace = {"torch": torch, "F": F, "logging": logging, "AverageMeter": AverageMeter,
                     "progress_bar": lambda *a, **k: None}
        recording.official_functions(checkout / "main.py", ["get_learning_rate", "accuracy", "train"], namespace)
        table = torch.zeros(2 * B, K)
        for epoch in range(2):
            loader = scripts.Loader([layouts.tensors(e, dtype) for e in PLAN if e["epoch"] == epoch], 2 * B, K)
            alpha_t = args.alpha_T * ((epoch + 1) / args.end_epoch)
            table = namespace["train"](table, torch.nn.CrossEntropyLoss(), Custom_CrossEntropy_PSKD(), optimizer,
                                       net, epoch, alpha_t, loader, args)
        recorded = scripts.records(optimizer, {"pskd": "loss"})
    return harness.floating_specs(net), list(zip(PLAN, recorded))


def base(checkout: Path) -> dict:
    return scripts.fixture_base("pskd-preact_resnet18", "pskd", "the progressive soft-target CE, 2 epochs of 2 steps "
                                "(the table across the epoch boundary)", REPOSITORY, checkout,
                                "main.py: train(all_predictions, ..., epoch, alpha_t, train_loader, args)",
                                side="authors.pskd", model="preact_resnet18", weight_seed=WEIGHT_SEED,
                                layout="indexed", shapes={"num_classes": K, "num_samples": 2 * B}, epochs=EPOCHS)


main = scripts.recorder_main(__doc__, "main.py", base, run, OPTIMIZER)


if __name__ == "__main__":
    main()
