"""Record the USKD fixtures from the authors' code (yzd-v/cls_KD): ``ClassificationDistiller.loss`` with its
``USKDLoss``, built from ``configs/distillers/cifar100/res18_sd_cifar.py``.

    python tests/fidelity/record_uskd.py --official /path/to/cls_KD [--out FOLDER]

Needs what its ``mmcls`` needs (not selfkd dependencies: install them elsewhere and put them on ``PYTHONPATH``):
``mmengine<1.0``, ``mmcv-lite<2.1`` (or mmcv), ``opencv-python-headless``, ``addict``, ``yapf``, ``termcolor``,
``rich``, ``model-index``. Builds the distiller of its CIFAR-100 ResNet-18 self-KD config (student and teacher
``ResNet_CIFAR`` depth 18, α = β = μ = 0.1, the weak head on stage 3's 256 channels, K = 100) and runs
``distiller.loss(inputs, data_samples)`` and its ``parse_losses`` (the total its trainer back-propagates) on the CPU
for two batches; float64 with SGD steps, float32 (and float64 again) with the weights fixed
(``recording.dtype_runs``); 32×32 images. The teacher (built but unused when ``sd`` is on) is drawn too; it has
no selfkd counterpart.

What differs from a run of its trainer, and why: mmengine's runner, data pipeline and data preprocessor (which
would normalise the images) are not run: the images go to ``loss`` as they are, with the optimizer (SGD lr 0.01,
momentum 0.9, weight decay 5e-4) stepped after ``parse_losses``' total. Recorded terms: ``ce`` (its
``ori_loss``), and ``target`` = α·loss_t, ``non_target`` = β·loss_non, ``weak`` (μ inside), the locals of
``USKDLoss.forward`` at return.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "yzd-v/cls_KD"
CONFIG = "configs/distillers/cifar100/res18_sd_cifar.py"
K, B, SIZE = 100, 4, 32
WEIGHT_SEED = 10
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
PLAN = layouts.plan("plain", (2,), B, K, SIZE)


def distiller(checkout: Path):
    """The official distiller of :data:`CONFIG` (its paths are relative to the checkout)."""
    import mmcls.models  # noqa: F401  (registers the models)
    from mmcls.registry import MODELS
    from mmengine.config import Config
    here = os.getcwd()
    os.chdir(checkout)
    try:
        return MODELS.build(Config.fromfile(CONFIG).model)
    finally:
        os.chdir(here)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """``loss`` and ``parse_losses`` of the official distiller, then an SGD step, for each planned batch."""
    with scripts.official_run(checkout, [], dtype):  # mmcls stays imported: mmengine registers it once
        from mmcls.models.dis_losses.uskd import USKDLoss
        from mmcls.structures import ClsDataSample
        model = distiller(checkout).to(dtype)
        harness.fill_(model, WEIGHT_SEED)
        model.train()
        uskd = model.distill_losses["loss_uskd"]
        optimizer = scripts.sgd({n: p for n, p in model.named_parameters() if p.requires_grad}, settings, OPTIMIZER)
        with recording.LocalsAtReturn(USKDLoss.forward) as calls:
            for entry in PLAN:
                x, y, _ = layouts.tensors(entry, dtype)
                losses = model.loss(x, [ClsDataSample().set_gt_label(int(label)) for label in y])
                loss, _ = model.parse_losses(losses)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        recorded = scripts.records(optimizer, {"ce": lambda local: local["losses"]["ori_loss"]})
        for step, c in zip(recorded, calls.calls):
            step["losses"].update(target=float(uskd.alpha * c["loss_t"]), non_target=float(uskd.beta * c["loss_non"]),
                                  weak=float(c["loss_weak"]))
    return harness.floating_specs(model), list(zip(PLAN, recorded))


def base(checkout: Path) -> dict:
    return scripts.fixture_base("uskd-cifar_resnet18", "uskd", "CE, the normalised target term, the non-target term "
                                "on the customised soft labels and the weak head's term, 2 steps", REPOSITORY,
                                checkout, f"mmcls ClassificationDistiller.loss + parse_losses, {CONFIG}",
                                side="authors.uskd", model="cifar_resnet18", weight_seed=WEIGHT_SEED,
                                shapes={"num_classes": K}, epochs=1)


main = scripts.recorder_main(__doc__, CONFIG, base, run, OPTIMIZER)


if __name__ == "__main__":
    main()
