"""Record the FRSKD classification fixtures from the official code (MingiJi/FRSKD, ``classification/``).

    python tests/fidelity/record_frskd.py --official /path/to/FRSKD [--out FOLDER]

Classification runs the official ``classification/utils.py: train()`` unmodified on CPU on its CIFAR ResNet-18 and
self-teacher (``BiFPNc``, or ``BiFPN`` for ``teacher=bifpn``) with its losses (``att``, ``fit``), SLA, mixup and
CutMix, in float64 and float32. The mixing's random draws (NumPy's Beta and box centres, torch's permutation) are
recorded with each step, for the test to give selfkd the same. The segmentation fixtures are recorded by
``record_frskd_seg.py`` (it needs ``efficientnet_pytorch``, which the official segmentation code imports).

What differs from a run of ``main.py``, and why: ``main()`` is not run (it reads CIFAR); the models, losses and
optimizer are built as it builds them, from an ``args`` with its defaults and the README's CIFAR-100 settings
(alpha 2, beta 100); ``.cuda()`` returns its object unchanged; NumPy's removed ``np.int`` is ``int`` again for the
official CutMix; 16x16 images and 10 classes keep a step short.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, recording  # noqa: E402

REPOSITORY = "MingiJi/FRSKD"
NUM_CLASSES, SIZE = 10, 16
WEIGHT_SEED = 0
POSITIVE = ["up_weight", "down_weight"]  # fusion weights (the official init is 1; a negative draw switches a path off)
# float64: 2 SGD steps with the official momentum and weight decay and lr 0.01 (official 0.1: these drawn weights
# are far from a trained network, and a smaller step keeps the second step's loss of the same size).
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
CASES = {  # case: (official args, selfkd options, batch size)
    "frskd-resnet18": ({"distill": "att", "bifpn": "BiFPNc"}, {}, 4),
    "frskd-bifpn-resnet18": ({"distill": "att", "bifpn": "BiFPN"}, {"teacher": "bifpn"}, 4),
    "frskd-fitnet-resnet18": ({"distill": "fit", "bifpn": "BiFPNc"}, {"feature_loss": "fitnet"}, 4),
    "frskd-sla-resnet18": ({"distill": "att", "bifpn": "BiFPNc", "aux": "sla", "aux_lamb": 1.0}, {"sla": True}, 2),
    "frskd-mixup-resnet18": ({"aug": "mixup", "aug_a": 0.2}, {"mix": "mixup"}, 4),
    "frskd-cutmix-resnet18": ({"aug": "cutmix", "aug_a": 1.0}, {"mix": "cutmix"}, 4),
}


def official_args(**overrides) -> argparse.Namespace:
    """``main.py``'s defaults, the README's CIFAR-100 alpha/beta, then ``overrides``."""
    args = dict(num_channels=256, num_features=-1, repeat=1, depth=[2, 2, 2], temperature=4.0, bifpn="BiFPNc",
                width=2, distill="att", alpha=2.0, beta=100.0, aux="none", aux_lamb=0.0, aug="none", aug_a=0.0,
                num_classes=NUM_CLASSES, model="cifarresnet18")
    return argparse.Namespace(**{**args, **overrides})


def official_modules(checkout: Path, args: argparse.Namespace) -> dict:
    """The modules ``main()`` trains, in its ``train_list`` order: model, criterion_ce, criterion_kd, bifpn."""
    from classification import distill_loss, models

    model = models.__dict__[args.model](num_classes=args.num_classes)
    args.num_features = len(model.network_channels)
    args.network_channels = model.network_channels[-args.num_features:]
    bifpn = models.__dict__[args.bifpn](args.network_channels, args.num_classes, args)
    criterion_ce = distill_loss.__dict__[args.aux](args) if args.aux == "sla" else nn.CrossEntropyLoss()
    criterion_kd = distill_loss.__dict__[args.distill](args, bifpn)
    return {"model": model, "criterion_ce": criterion_ce, "criterion_kd": criterion_kd, "bifpn": bifpn}


def run(checkout: Path, case: str, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """One step per batch of the official ``train()``: (official tensor specs, [(batch, step record), ...])."""
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from classification.distill_loss.sla import SLALoss
    from classification.utils import train

    overrides, _, batch = CASES[case]
    args = official_args(**overrides)
    modules = official_modules(checkout, args)
    specs = recording.specs_of(modules)
    for module in modules.values():
        module.to(dtype).train()
    recording.load_official(modules, harness.draw(specs, WEIGHT_SEED, POSITIVE))
    criterion = [modules["criterion_ce"], modules["criterion_kd"]]
    sla, draws = recording.LocalsAtReturn(SLALoss.forward), recording.Draws()

    def record(grads, frame):
        return {**step_record(grads, frame, sla.calls[-1] if sla.calls else None, criterion, args),
                **({"draws": mixing_draws(draws.take())} if args.aug != "none" else {})}

    optimizer = recording.RecordingSGD(recording.parameters_by_name(modules), record, lr=settings["lr"] if settings
                                       else 0.0, momentum=OPTIMIZER["momentum"], weight_decay=OPTIMIZER["weight_decay"])
    plan = [{"epoch": 0, "images_seed": 100 + step, "labels_seed": 200 + step} for step in range(2)]
    loader = [harness.batch({"shapes": shapes(batch)}, b, dtype) for b in plan]
    np.random.seed(0), torch.manual_seed(0)  # the same draws in every run of the case
    np.int = int  # removed in NumPy 1.24; the official cutmix_data uses it
    with recording.cpu_only(), sla, draws:
        train(modules["model"], modules["bifpn"], optimizer, criterion, loader, args)
    return specs, list(zip(plan, optimizer.steps))


def mixing_draws(calls: list) -> dict:
    """The official mixing's draws of one step: λ₀ ~ Beta(α, α), the permutation and (CutMix) the box centres."""
    values = {name: [v for n, v in calls if n == name] for name in ("beta", "randperm", "randint")}
    return {"lam": values["beta"][0], "perm": values["randperm"][0], "centres": values["randint"]}


def shapes(batch: int) -> dict:
    return {"images": [batch, 3, SIZE, SIZE], "num_classes": NUM_CLASSES}


def ce_of(frame: dict, logits: torch.Tensor, criterion_ce) -> torch.Tensor:
    """The official CE of ``logits``: mixed-target (``utils.mixed_criterion``) when the batch was mixed."""
    from classification.utils import mixed_criterion

    if "lam" in frame:
        return mixed_criterion(logits, frame["targets_1"], frame["targets_2"], frame["lam"])
    return criterion_ce(logits, frame["targets"])


def step_record(grads: dict, frame: dict, sla: dict | None, criterion: list, args) -> dict:
    """One step in selfkd's term names, from ``train``'s locals at ``optimizer.step()`` (and, with SLA, those of
    ``SLALoss.forward``), each term computed by the official loss modules."""
    criterion_ce, criterion_kd = criterion
    targets = frame["targets"]
    with torch.no_grad():
        if sla is None:
            logits, feats = (frame["outputs"], frame["bi_outputs"]), (frame["feats"], frame["bi_feats"])
            losses = {"ce": ce_of(frame, logits[0], criterion_ce), "ce_teacher": ce_of(frame, logits[1], criterion_ce)}
        else:
            logits, feats = (sla["outputs"], sla["bi_outputs"]), (sla["feats"], sla["bi_feats"])
            b = targets.size(0)
            losses = {"ce": criterion_ce.ce(logits[0][:b], targets),
                      "ce_teacher": criterion_ce.ce(logits[1][:b], targets),
                      "ce_joint": sla["joint_loss"].detach(), "sla_kd": args.aux_lamb * sla["sla_loss"].detach()}
        losses["kd"] = criterion_kd.alpha * criterion_kd.kd(*logits)
        if args.distill == "att":
            feature = sum(criterion_kd.at_loss(s, t.detach()) for s, t in zip(*feats))
        else:
            feature = sum(criterion_kd.fit_loss(s, t.detach(), i) for i, (s, t) in enumerate(zip(*feats)))
        losses["at" if args.distill == "att" else "fitnet"] = criterion_kd.beta * feature
        total = frame["loss"].detach()
        if not torch.isclose(sum(losses.values()), total, rtol=1e-5):
            raise AssertionError(f"the terms do not add up to the official loss: {losses} vs {total}")
    return harness.step_record(losses, total, grads)


def main(argv=None) -> None:
    args = recording.arguments(__doc__.splitlines()[0], argv)
    recording.official_path(args.official, "classification/utils.py")
    torch.set_num_threads(1)
    commit = recording.commit_of(args.official)
    for case, (overrides, options, batch) in CASES.items():
        base = {"case": case, "method": "frskd", "task": "classification", "selfkd_side": "frskd.classification",
                "reference": {"repository": REPOSITORY, "commit": commit, "entry": "classification/utils.py: train()"},
                "compared": "loss terms, total and gradients of 2 steps (float64: an SGD step between them)"
                            + (", the official mixing draws" if "aug" in overrides else ""),
                "options_needed": ", ".join(f"{k}={str(v).lower()}" for k, v in options.items()) or "none",
                "selfkd_options": options, "official_args": overrides, "weight_seed": WEIGHT_SEED,
                "positive": POSITIVE, "shapes": shapes(batch), "epochs": 1,
                "notes": ["official cifarresnet18; alpha 2, beta 100, T 4 (README's CIFAR-100 command)"]}
        for run_ in recording.dtype_runs(lambda dtype, settings, case=case: run(args.official, case, dtype, settings),
                                         OPTIMIZER):
            recording.write(args.out, recording.fixture(base, run_))


if __name__ == "__main__":
    main()
