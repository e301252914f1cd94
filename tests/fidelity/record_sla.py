"""Record the SLA-SD fixtures from the authors' code (hankook/SLA): the update function of
``trainers.create_sla_sd_trainer`` (mode ``sla+sd``, augmentation ``rotation``).

    python tests/fidelity/record_sla.py --official /path/to/SLA [--out FOLDER]

Needs ``pytorch-ignite`` (the official trainers are ignite engines; not a selfkd dependency: install it elsewhere and
put it on ``PYTHONPATH``). Builds the official engine with ``T = 1`` (its default) and runs its update function,
unmodified, on the CPU for two batches; float64 with SGD steps, float32 (and float64 again) with the weights fixed
(``recording.dtype_runs``). Model: ``check_model("resnet18", 4K, K)`` — torchvision's ResNet-18 trunk with the joint
and the single head (its default ``cresnet32`` uses zero-padding shortcuts, a backbone selfkd does not have);
32×32 images.

What differs from a run of ``train.py``, and why: its module level (arguments, data, ``DataParallel``, the
iteration loop, evaluation) is not run: the recorder supplies the model, the batches and the optimizer (SGD lr
0.01, momentum 0.9, weight decay 1e-4 as its ``--wd``). Recorded terms: ``joint_ce``, ``ce`` (the single head's)
and ``kd`` = T²·KL, its locals ``joint_loss``, ``single_loss``, ``distillation_loss``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, scripts  # noqa: E402

REPOSITORY = "hankook/SLA"
K, B, SIZE, T = 10, 4, 32, 1.0
WEIGHT_SEED = 9
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
PLAN = layouts.plan("plain", (2,), B, K, SIZE)


def run(checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official update function over the planned batches: (official tensor specs, [(batch, record), ...])."""
    with scripts.official_run(checkout, ["models", "trainers", "augmentations", "utils"], dtype):
        import augmentations
        import trainers
        from models import check_model
        transform, rotations = augmentations.rotation()
        net = check_model("resnet18", K * rotations, K)
        harness.fill_(net, WEIGHT_SEED)
        optimizer = scripts.sgd(net.named_parameters(), settings, OPTIMIZER)
        engine = trainers.create_sla_sd_trainer(net, transform, optimizer, T=T)
        for entry in PLAN:
            engine._process_function(engine, layouts.tensors(entry, dtype)[:2])
        recorded = scripts.records(optimizer, {"joint_ce": "joint_loss", "ce": "single_loss",
                                               "kd": lambda local: local["distillation_loss"] * T**2})
    return harness.floating_specs(net), list(zip(PLAN, recorded))


def base(checkout: Path) -> dict:
    return scripts.fixture_base("sla_sd-resnet18", "sla_sd", "the joint CE, the single head's CE and the KD from the "
                                "aggregated joint logits, 2 steps", REPOSITORY, checkout,
                                "trainers.py: create_sla_sd_trainer(...)'s update, augmentation rotation, T 1",
                                side="authors.sla_sd", model="resnet18", weight_seed=WEIGHT_SEED,
                                shapes={"num_classes": K}, epochs=1)


main = scripts.recorder_main(__doc__, "trainers.py", base, run, OPTIMIZER)


if __name__ == "__main__":
    main()
