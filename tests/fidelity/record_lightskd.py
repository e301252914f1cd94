"""Record the LightSKD fixtures from the official code (xucong-parsifal/LightSKD): ``train()`` of its ``train.py``.

    python tests/fidelity/record_lightskd.py --official /path/to/LightSKD [--out FOLDER]

Runs the official ``train(epoch)`` unmodified on CPU (``.to(device)`` with device "cpu") over two epochs of small
batches (3 + 2 steps) with DRG and DSR on (its only setting that runs correctly), in float64 and float32, and writes:

- ``lightskd-resnet18-<dtype>``: CE(z) + CE(a) + DRG's KD + DSR's KD, every step (DSR's cache across steps and its
  reset at the epoch start);
- ``drg-resnet18-<dtype>``: the first step alone, where DSR adds nothing: DRG's loss.

What differs from a run of ``train.py``, and why: its module level (argument parsing, CIFAR loaders) is not run; the
namespace ``train`` reads supplies ``args`` (``alpha``, ``beta``, ``DRG``, ``DSR`` as attributes: the script's
``dest=`` names make ``args.alpha`` unreadable), ``bs`` (read but never defined there), the batches and the
optimizer. The model is its ``ResNet18`` and the DRG head its ``Istr_2`` built for ResNet-18's 128 stage-2 channels
(``adapter_2()`` builds it for ResNet-50's 512, so the default ResNet-18 crashes). The constant 100 it adds to the
loss is subtracted from the recorded total.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, recording  # noqa: E402

REPOSITORY = "xucong-parsifal/LightSKD"
NUM_CLASSES, BATCH, SIZE = 10, 4, 16
EPOCHS = [3, 2]  # steps per epoch
WEIGHT_SEED = 0
# float64: SGD steps with the official momentum and weight decay, lr 0.01 (the official 0.1 makes the loss of these
# drawn weights grow 35-fold in 3 steps). float32: weights fixed (lr 0), so the comparison measures float32
# rounding in each step's maths and in DSR's cache, not a trajectory that amplifies it.
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def batches(epoch: int) -> list[dict]:
    first = sum(EPOCHS[:epoch])
    return [{"epoch": epoch, "images_seed": 100 + step, "labels_seed": 200 + step}
            for step in range(first, first + EPOCHS[epoch])]


def official_models(checkout: Path):
    sys.path.insert(0, str(checkout))
    from backbone.adapter import BasicBlock, Istr_2
    from backbone.resnet import ResNet18

    return ResNet18(num_class=NUM_CLASSES), Istr_2(BasicBlock, num_classes=NUM_CLASSES)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official ``train`` over every epoch, SGD with ``settings`` (``None``: lr 0): (official tensor specs,
    [(batch, step record), ...])."""
    net, ada_net = official_models(checkout)
    modules = {"net": net, "ada_net": ada_net}
    specs = recording.specs_of(modules)
    net.to(dtype), ada_net.to(dtype)
    recording.load_official(modules, harness.draw(specs, WEIGHT_SEED))
    criterion = nn.CrossEntropyLoss()
    optimizer = recording.RecordingSGD(recording.parameters_by_name(modules),
                                       lambda grads, frame: step_record(grads, frame, criterion),
                                       lr=settings["lr"] if settings else 0.0, momentum=OPTIMIZER["momentum"],
                                       weight_decay=OPTIMIZER["weight_decay"])
    from utils import output_process

    namespace = {"torch": torch, "nn": nn, "F": F, "net": net, "ada_net": ada_net, "optimizer": optimizer,
                 "criterion": criterion, "output_process": output_process, "device": "cpu",
                 "bs": BATCH, "testloader": None}
    recording.official_functions(checkout / "train.py", ["train"], namespace)
    records = []
    with tempfile.TemporaryDirectory() as folder:
        namespace["args"] = argparse.Namespace(alpha=0.2, beta=1.0, DRG=True, DSR=True, num_classes=NUM_CLASSES,
                                               model_path=folder + "/", use_parallel=False, model="ResNet18")
        for epoch in range(len(EPOCHS)):
            plan = batches(epoch)
            namespace["trainloader"] = [(harness.images(b["images_seed"], (BATCH, 3, SIZE, SIZE), dtype),
                                         harness.labels(b["labels_seed"], BATCH, NUM_CLASSES)) for b in plan]
            before = len(optimizer.steps)
            namespace["train"](epoch)
            records += list(zip(plan, optimizer.steps[before:]))
    return specs, records


def step_record(grads: dict, frame: dict, criterion) -> dict:
    """One step in selfkd's term names, from the locals of ``train`` when it calls ``optimizer.step()``."""
    with torch.no_grad():
        losses = {"ce": criterion(frame["outputs"], frame["targets"]),
                  "drg_ce": criterion(frame["outputs_d"], frame["targets"]),
                  "drg_kd": frame["ist"].detach(),
                  "dsr": frame["adv_loss"].detach() if frame["batch_idx"] != 0 else torch.zeros(())}
        total = frame["loss"] - 100  # the official constant
        if not torch.isclose(sum(losses.values()), total.detach(), rtol=1e-5):
            raise AssertionError(f"the terms do not add up to the official loss: {losses} vs {total}")
    return harness.step_record(losses, total.detach(), grads)


def without_dsr(records: list) -> list:
    """The first step, without the DSR term (``drg``)."""
    return [(b, {**r, "losses": {k: v for k, v in r["losses"].items() if k != "dsr"}}) for b, r in records[:1]]


def main(argv=None) -> None:
    args = recording.arguments(__doc__.splitlines()[0], argv)
    recording.official_path(args.official, "train.py")
    torch.set_num_threads(1)
    base = {"task": "classification", "options_needed": "none", "weight_seed": WEIGHT_SEED, "positive": [],
            "reference": {"repository": REPOSITORY, "commit": recording.commit_of(args.official),
                          "entry": "train.py: train(epoch)"},
            "shapes": {"images": [BATCH, 3, SIZE, SIZE], "num_classes": NUM_CLASSES}, "epochs": len(EPOCHS),
            "notes": ["official ResNet18 + Istr_2(BasicBlock) (DRG head on stage 2, 128 channels); DRG and DSR on",
                      "recorded total = official loss - 100 (the constant it adds); dsr = 0 where it adds no term"]}
    lightskd = {**base, "case": "lightskd-resnet18", "method": "lightskd", "selfkd_side": "lightskd.lightskd",
                "compared": "loss terms, total and gradients of 5 steps (3 + 2: DSR's cache across steps and its "
                            "reset at the epoch start); float64 with SGD steps between them"}
    drg = {**base, "case": "drg-resnet18", "method": "drg", "selfkd_side": "lightskd.drg",
           "compared": "loss terms, total and gradients of the first step (DSR adds nothing there)"}
    for run_ in recording.dtype_runs(lambda dtype, settings: run(args.official, dtype, settings), OPTIMIZER):
        recording.write(args.out, recording.fixture(lightskd, run_))
        recording.write(args.out, recording.fixture(drg, run_, without_dsr))


if __name__ == "__main__":
    main()
