"""Record the FRSKD segmentation fixtures from the official code (MingiJi/FRSKD, ``segmentation/``).

    python tests/fidelity/record_frskd_seg.py --official /path/to/FRSKD [--out FOLDER]

Needs ``efficientnet_pytorch`` (and ``pandas``, for the official log), as the official code does. Runs the official
``train_model_seg()`` of ``segmentation/main.py`` unmodified on CPU: its ``EfficientDet`` on EfficientNet-B0 (FPN,
3 + 2 ``BiFPNSeg``, two heads), its CE / ``DistillKL`` / ``Attention`` losses, its ramp and its gradient clipping,
over 4 epochs of one batch each with ``warmup=2`` (KD and AT off in epochs 0-1, ramped in epoch 2, full in 3), in
float64 and float32.

What differs from a run of ``main.py``, and why: its module level (arguments, VOC lists, loaders) is not run; the
functions read their globals from a namespace that supplies them; ``accum_step`` is 1 (the official 16 batches of
2 per update is the engine's accumulation, not the method's maths); ``EfficientNet.from_pretrained`` is
``from_name`` (nothing is downloaded: the weights are drawn); ``.cuda()`` returns its object; NumPy's removed
``np.float`` is ``float`` again for the official metric; the gradients are recorded where ``clip_grad_value_`` is
called, before it clips them.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, recording  # noqa: E402

REPOSITORY = "MingiJi/FRSKD"
# 96x96 images: the coarsest levels P6/P7 are 2x2 and 1x1; at 64x64 (1x1 and 1x1) BN over the batch's two values
# makes some gradients ill-conditioned (two float64 runs of the same maths differ by up to 5e-8 there).
NUM_CLASSES, BATCH, SIZE = 21, 2, 96  # the official heads have 21 outputs
EPOCHS, WARMUP = 4, 2
WEIGHT_SEED = 0
# The weights stay fixed (lr 0) in both precisions: from these drawn weights, SGD steps (official lr 0.01, clipping
# at 2.0) make any two float64 implementations drift apart chaotically (measured: relative differences 1e-15,
# 6e-13, 2e-9, 2e-8 over 4 steps; 3 % with batch 4), which would measure that chaos, not the method. What crosses
# the steps here is the ramp: epochs 0-1 without KD and AT, epoch 2 ramped, epoch 3 at full strength.
OPTIMIZER = None
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4  # the official recipe (lr 0 here)
FUNCTIONS = ["sigmoid_rampup", "get_current_lr", "adjust_learning_rate", "train_model_seg"]


class Epochs:
    """The training loader: each pass (an epoch) yields the next epoch's batches."""

    def __init__(self, epochs: list[list[dict]]):
        self.epochs = iter(epochs)

    def __iter__(self):
        return iter(next(self.epochs))


def official_namespace(checkout: Path) -> dict:
    """The globals ``train_model_seg`` reads, and the official network, losses and functions."""
    sys.path.insert(0, str(checkout / "segmentation"))
    import pandas as pd
    from efficientnet_pytorch import EfficientNet
    from tqdm import tqdm
    from utils.distill import Attention, DistillKL
    from utils.efficientdet import EfficientDet
    from utils.metric import EvaluatorSeg

    EfficientNet.from_pretrained = classmethod(lambda cls, name, **kwargs: cls.from_name(name, **kwargs))
    np.float = float  # removed in NumPy 1.24; the official EvaluatorSeg uses it
    args = argparse.Namespace(alpha=1.0, beta=50.0, warmup=WARMUP, anneal=True, temp=1.0, lr=LR,
                              step=[40], backbone="0", batch_size=BATCH, log_path="fixture")
    namespace = {"np": np, "pd": pd, "torch": torch, "nn": nn, "time": time, "tqdm": tqdm, "args": args,
                 "EvaluatorSeg": EvaluatorSeg, "criterion_att": Attention(), "criterion_kd": DistillKL(args),
                 "accum_step": 1.0, "test_break": False, "net": EfficientDet(backbone="efficientnet-b0")}
    return recording.official_functions(checkout / "segmentation" / "main.py", FUNCTIONS, namespace)


def step_record(grads: dict, frame: dict, namespace: dict) -> dict:
    """One step in selfkd's term names, from ``train_model_seg``'s locals where it clips the gradients."""
    criterion, target = frame["criterion"], frame["target"].long()
    with torch.no_grad():
        losses = {"ce": criterion(frame["out1"], target), "ce_teacher": criterion(frame["out2"], target),
                  "kd": frame["alpha"] * namespace["criterion_kd"](frame["out1"], frame["out2"]),
                  "at": frame["beta"] * namespace["criterion_att"](frame["sources1"], frame["sources2"])}
        total = frame["loss"].detach() * namespace["accum_step"]
        if not torch.isclose(sum(losses.values()), total, rtol=1e-5):
            raise AssertionError(f"the terms do not add up to the official loss: {losses} vs {total}")
    return harness.step_record(losses, total, grads)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """``train_model_seg`` over :data:`EPOCHS` epochs: (official tensor specs, [(batch, step record), ...])."""
    namespace = official_namespace(checkout)
    net = namespace["net"].to(dtype)
    specs = recording.specs_of({"net": net})
    recording.load_official({"net": net}, harness.draw(specs, WEIGHT_SEED))
    optimizer = recording.RecordingSGD(recording.parameters_by_name({"net": net}),
                                       lambda grads, frame: step_record(grads, frame, namespace), at_step=False,
                                       lr=0.0, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    namespace["args"].lr = settings["lr"] if settings else 0.0  # the official loop sets the lr from it each epoch
    plan = [{"epoch": e, "images_seed": 100 + e, "labels_seed": 200 + e} for e in range(EPOCHS)]
    fixture_shapes = {"shapes": shapes()}

    def sample(entry):
        image, label = harness.batch(fixture_shapes, entry, dtype)
        return {"image": image, "label": label}

    val = [sample({"images_seed": 99, "labels_seed": 199})]
    loaders = {"train": Epochs([[sample(b)] for b in plan]), "val": val}
    clip = torch.nn.utils.clip_grad_value_

    def recorded_clip(parameters, clip_value):
        optimizer.snapshot(sys._getframe(1).f_locals)
        return clip(parameters, clip_value)

    with tempfile.TemporaryDirectory() as folder, recording.cpu_only():
        cwd = os.getcwd()
        os.chdir(folder)
        os.mkdir("logs")  # where the official loop writes its log
        torch.nn.utils.clip_grad_value_ = recorded_clip
        try:
            namespace["train_model_seg"](net, loaders, nn.CrossEntropyLoss(ignore_index=255, reduction="mean"),
                                         optimizer, num_epochs=EPOCHS, args=namespace["args"])
        finally:
            torch.nn.utils.clip_grad_value_ = clip
            os.chdir(cwd)
    return specs, list(zip(plan, optimizer.steps))


def shapes() -> dict:
    return {"images": [BATCH, 3, SIZE, SIZE], "masks": [BATCH, SIZE, SIZE], "num_classes": NUM_CLASSES}


def main(argv=None) -> None:
    args = recording.arguments(__doc__.splitlines()[0], argv)
    recording.official_path(args.official, "segmentation/main.py")
    torch.set_num_threads(1)
    base = {"case": "frskd-seg-effb0", "method": "frskd", "task": "segmentation", "selfkd_side": "frskd.segmentation",
            "reference": {"repository": REPOSITORY, "commit": recording.commit_of(args.official),
                          "entry": "segmentation/main.py: train_model_seg()"},
            "compared": f"loss terms, total and gradients of 4 steps, one per epoch, warm-up {WARMUP} (KD and AT off, "
                        "off, ramped, full), weights fixed",
            "options_needed": "stem_activation=false", "selfkd_options": {"stem_activation": False},
            "weight_seed": WEIGHT_SEED, "positive": [],
            "shapes": shapes(), "epochs": EPOCHS, "warmup_epochs": WARMUP,
            "notes": ["official EfficientDet(efficientnet-b0), from_name (drawn weights); 64x64 images, 21 classes, "
                      "every 7th pixel labelled 255", "accum_step 1: one update per batch"]}
    for run_ in recording.dtype_runs(lambda dtype, settings: run(args.official, dtype, settings), OPTIMIZER):
        recording.write(args.out, recording.fixture(base, run_))


if __name__ == "__main__":
    main()
