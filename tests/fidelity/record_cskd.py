"""Record the CS-KD fixtures from the authors' code (alinlab/cs-kd): ``train(epoch)`` of its ``train.py``.

    python tests/fidelity/record_cskd.py --official /path/to/cs-kd [--out FOLDER]

Runs the official ``train(epoch)`` (``--cls``: the CS-KD loss) with its ``KDLoss``, unmodified, on the CPU for two
pair batches ``[anchors; partners]`` (the official ``train`` divides by the last batch index, so an epoch needs
two); float64 with SGD steps, float32 (and float64 again) with the weights fixed (``recording.dtype_runs``). Its
``CIFAR_ResNet18`` pools with ``F.avg_pool2d(out, 4)``, so the images are 32×32.

What differs from a run of ``train.py``, and why: its module level (argument parsing, data, logging setup) is not
run: the namespace ``train`` reads supplies ``args`` (the script's parser, ``--cls``), the model, ``criterion``,
``kdloss``, the batches and the optimizer (SGD lr 0.01 instead of 0.1, the official momentum 0.9 and weight decay
1e-4); ``progress_bar`` prints nothing (its module reads the terminal size at import). The recorded terms: ``kd``
= ``lamda · cls_loss``, ``ce`` = the official total minus ``kd`` (``train`` adds them in place).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "alinlab/cs-kd"
K, B, SIZE = 10, 4, 32
WEIGHT_SEED = 2
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
PLAN = layouts.plan("pairs", (2,), B, K, SIZE)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official ``train(0)`` over the planned batches: (official tensor specs, [(batch, step record), ...])."""
    with scripts.official_run(checkout, ["models", "utils", "datasets"], dtype):
        import models
        script = checkout / "train.py"
        args = scripts.official_arguments(script, ["--cls"])
        net = models.load_model("CIFAR_ResNet18", K)
        harness.fill_(net, WEIGHT_SEED)
        optimizer = scripts.sgd(net.named_parameters(), settings, OPTIMIZER)
        namespace = {"torch": torch, "nn": nn, "logging": logging, "args": args, "net": net, "optimizer": optimizer,
                     "criterion": nn.CrossEntropyLoss(), "use_cuda": False, "progress_bar": lambda *a, **k: None}
        recording.official_functions(script, ["KDLoss", "train"], namespace)
        namespace["kdloss"] = namespace["KDLoss"](args.temp)
        namespace["trainloader"] = [layouts.tensors(entry, dtype)[:2] for entry in PLAN]
        namespace["train"](0)
        recorded = scripts.ce_kd_records(optimizer, args.lamda, "cls_loss")
    return harness.floating_specs(net), list(zip(PLAN, recorded))


def base(checkout: Path) -> dict:
    return scripts.fixture_base("cskd-preact_resnet18", "cskd", "CE and the partner KD (two forwards, the partners "
                                "under no_grad), 2 steps", REPOSITORY, checkout, "train.py: train(epoch), --cls",
                                side="authors.cskd", model="preact_resnet18", weight_seed=WEIGHT_SEED,
                                layout="pairs", shapes={"num_classes": K}, epochs=1)


main = scripts.recorder_main(__doc__, "train.py", base, run, OPTIMIZER)


if __name__ == "__main__":
    main()
