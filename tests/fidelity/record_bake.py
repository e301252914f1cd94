"""Record the BAKE fixtures from the authors' code (yxgeee/BAKE): ``train(epoch)`` of ``small_scale/train.py``.

    python tests/fidelity/record_bake.py --official /path/to/BAKE [--out FOLDER]

Runs the official ``train(epoch)`` with its ``KDLoss`` and ``knowledge_ensemble``, unmodified, on the CPU for two
batches of 2 anchors each followed by 3 images of its class (its ``IdentityBatchSampler`` layout); float64 with SGD
steps, float32 (and float64 again) with the weights fixed (``recording.dtype_runs``). Its ``CIFAR_ResNet18`` pools
with ``AvgPool2d(4)``, so the images are 32×32.

What differs from a run of ``train.py``, and why: its module level (argument parsing, data, logging setup) is not
run: the namespace ``train`` reads supplies ``args`` (the script's parser), the model, ``criterion``, ``kdloss``,
``softmax``, the batches and the optimizer (SGD lr 0.01 instead of 0.1, the official momentum 0.9 and weight decay
1e-4); ``progress_bar`` prints nothing. The recorded terms: ``kd`` = ``lamda · kd_loss``, ``ce`` = the official total
minus ``kd`` (``train`` adds them in place).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "yxgeee/BAKE"
K, ANCHORS, PARTNERS, SIZE = 10, 2, 3, 32
WEIGHT_SEED = 3
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
PLAN = layouts.plan("groups", (2,), ANCHORS * (PARTNERS + 1), K, SIZE, PARTNERS)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official ``train(0)`` over the planned batches: (official tensor specs, [(batch, step record), ...])."""
    folder = checkout / "small_scale"
    with scripts.official_run(folder, ["models", "utils", "datasets"], dtype):
        import models
        script = folder / "train.py"
        args = scripts.official_arguments(script)
        net = models.load_model(args.arch, K)
        harness.fill_(net, WEIGHT_SEED)
        optimizer = scripts.sgd(net.named_parameters(), settings, OPTIMIZER)
        namespace = {"torch": torch, "nn": nn, "logging": logging, "args": args, "net": net, "optimizer": optimizer,
                     "criterion": nn.CrossEntropyLoss(), "softmax": nn.Softmax(dim=1), "use_cuda": False,
                     "progress_bar": lambda *a, **k: None}
        recording.official_functions(script, ["KDLoss", "knowledge_ensemble", "train"], namespace)
        namespace["kdloss"] = namespace["KDLoss"](args.temp)
        namespace["trainloader"] = [layouts.tensors(entry, dtype)[:2] for entry in PLAN]
        namespace["train"](0)
        recorded = scripts.ce_kd_records(optimizer, args.lamda, "kd_loss")
    return harness.floating_specs(net), list(zip(PLAN, recorded))


def base(checkout: Path) -> dict:
    return scripts.fixture_base("bake-preact_resnet18", "bake", "CE and the batch-ensemble KD, 2 steps", REPOSITORY,
                                checkout, "small_scale/train.py: train(epoch)", side="authors.bake",
                                model="preact_resnet18", weight_seed=WEIGHT_SEED, layout="groups",
                                shapes={"num_classes": K, "partners": PARTNERS}, epochs=1)


main = scripts.recorder_main(__doc__, "small_scale/train.py", base, run, OPTIMIZER)


if __name__ == "__main__":
    main()
