"""Record the ONE fixtures from the authors' code (Lan1991Xu/ONE_NeurIPS2018): ``train(...)`` of ``cifar_one.py``.

    python tests/fidelity/record_one.py --official /path/to/ONE_NeurIPS2018 [--out FOLDER]

Runs the official ``train(trainloader, model, criterion, criterion_kl, optimizer, epoch, use_cuda)`` with its
``KLLoss`` and ``get_current_consistency_weight`` (the ramp, ``consistency_rampup`` 80) on its ``one_resnet``
(depth 32: three branches copying the last stage, the gate on the second stage) on the CPU for two epochs (2 + 1
batches: the ramp's weight changes at the epoch boundary); float64 with SGD steps, float32 (and float64 again) with
the weights fixed (``recording.dtype_runs``). The network pools with ``AvgPool2d(8)``/``(16)``: 32×32 images.

The code is Python 2 and PyTorch 0.3; the recorder runs copies with three fixes, none touching the loss:
``targets.cuda(async=True)`` is a syntax error since Python 3.7 (→ ``non_blocking=True``; not run on the CPU),
``loss.data[0]`` indexes a 0-dim tensor (→ ``.item()``; it only feeds the meters), and ``accuracy`` views a
non-contiguous tensor and returns 0-dim sums that ``train`` indexes (``utils/eval.py``: ``.view(-1)...sum(0)`` →
``.reshape(-1)...sum(0, keepdim=True)``, as PyTorch 0.3 returned them; a metric). Its ``utils`` package
imports matplotlib for plotting: the meters, ``accuracy`` and the ramp are taken from their own files. Not run: its
module level and ``main`` (arguments, data, model, optimizer, epochs); the recorder supplies them (SGD lr 0.01,
momentum 0.9, weight decay 5e-4) and a progress bar that prints nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "Lan1991Xu/ONE_NeurIPS2018"
K, B, SIZE, DEPTH = 10, 4, 32, 32
WEIGHT_SEED = 7
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
PLAN = layouts.plan("plain", (2, 1), B, K, SIZE)
FIXES = {"cifar_one.py": {"async=True": "non_blocking=True", "loss_kl.data[0]": "loss_kl.item()",
                          "loss.data[0]": "loss.item()"},
         "utils/eval.py": {".view(-1).float().sum(0)": ".reshape(-1).float().sum(0, keepdim=True)"}}


def namespace_of(checkout: Path, folder: str) -> dict:
    """``train``'s globals: its helpers, each from its own file (with :data:`FIXES`)."""
    namespace = {"torch": torch, "np": np, "Bar": scripts.NoProgress,
                 "args": argparse.Namespace(consistency_rampup=80.0)}
    recording.official_functions(checkout / "utils/ramps.py", ["sigmoid_rampup"], namespace)
    namespace["ramps"] = argparse.Namespace(sigmoid_rampup=namespace["sigmoid_rampup"])
    recording.official_functions(checkout / "utils/misc.py", ["AverageMeter"], namespace)
    recording.official_functions(scripts.fixed_copy(checkout / "utils/eval.py", FIXES["utils/eval.py"], folder),
                                 ["accuracy"], namespace)
    script = scripts.fixed_copy(checkout / "cifar_one.py", FIXES["cifar_one.py"], folder)
    return recording.official_functions(script, ["get_current_consistency_weight", "train"], namespace)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official ``train`` for each epoch: (official tensor specs, [(batch, step record), ...])."""
    with scripts.official_run(checkout, ["models", "loss"], dtype), tempfile.TemporaryDirectory() as folder:
        import models.cifar as models
        from loss import KLLoss
        net = models.one_resnet(depth=DEPTH, num_classes=K)
        harness.fill_(net, WEIGHT_SEED)
        optimizer = scripts.sgd(net.named_parameters(), settings, OPTIMIZER)
        namespace = namespace_of(checkout, folder)
        for epoch in range(2):
            loader = [layouts.tensors(entry, dtype)[:2] for entry in PLAN if entry["epoch"] == epoch]
            namespace["train"](loader, net, nn.CrossEntropyLoss(), KLLoss(), optimizer, epoch, False)
        recorded = scripts.records(optimizer, {"ce": "loss_cross", "kd": "loss_kl"})
    return harness.floating_specs(net), list(zip(PLAN, recorded))


def base(checkout: Path) -> dict:
    return scripts.fixture_base("one-cifar_resnet32", "one", "the branches' and the ensemble's CE and the ramped KD "
                                "to the gated ensemble, 2 epochs (2 + 1 steps)", REPOSITORY, checkout,
                                "cifar_one.py: train(...), one_resnet depth 32", side="authors.one",
                                options={"branch_from": 2}, model={"blocks": [5, 5, 5], "width": 16},
                                weight_seed=WEIGHT_SEED, shapes={"num_classes": K}, epochs=300,
                                notes=["its KLLoss adds 1e-7 to the teacher probabilities, selfkd does not"])


main = scripts.recorder_main(__doc__, "cifar_one.py", base, run, OPTIMIZER)


if __name__ == "__main__":
    main()
