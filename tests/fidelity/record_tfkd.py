"""Record the TF-KD fixtures from the authors' code (yuanli2333/Teacher-free-Knowledge-Distillation): ``train`` and
``train_kd`` of its ``train_kd.py`` with ``loss_kd_regularization`` (Tf-KD_reg) and ``loss_kd_self`` (Tf-KD_self).

    python tests/fidelity/record_tfkd.py --official /path/to/Teacher-free-Knowledge-Distillation [--out FOLDER]

Runs the official functions, unmodified, on the CPU for two batches with the hyper-parameters of its ResNet-18
experiments (``experiments/base_experiments/base_resnet18/params.json``: reg_alpha 0.1, reg_temperature 20,
multiplier 100; ``experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json``: alpha 0.95,
temperature 6, multiplier 50), K = 100 classes (its weights are α·m/K in batchmean terms, selfkd's defaults at
K = 100); float64 with SGD steps, float32 (and float64 again) with the weights fixed (``recording.dtype_runs``).
Its ``ResNet18`` pools with ``F.avg_pool2d(out, 4)``, so the images are 32×32. Tf-KD_self's teacher (the same
``ResNet18``, in eval mode as ``train_kd`` sets it) is drawn after the student.

What differs from a run of ``main.py``, and why: its module level and ``train_and_evaluate*`` (data, models,
optimizer, epochs) are not run: the recorder supplies ``params``, ``args`` (``regularization``), the batches, the
optimizer (SGD lr 0.01, momentum 0.9, weight decay 5e-4) and a warm-up scheduler that keeps the lr; ``tqdm``
prints nothing. The loss functions return only their total: the terms are their locals ``loss_CE`` and
``loss_soft_regu`` / ``D_KL`` at return, weighted as they weight them.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch import nn
from torch.autograd import Variable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "yuanli2333/Teacher-free-Knowledge-Distillation"
K, B, SIZE = 100, 4, 32
WEIGHT_SEED = 5
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
PLAN = layouts.plan("plain", (2,), B, K, SIZE)
PARAMS = {"tfkd_reg": "experiments/base_experiments/base_resnet18/params.json",
          "tfkd_self": "experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json"}


def terms(case: str, calls: list[dict]) -> list[dict]:
    """The weighted terms of each loss call, from its locals at return."""
    if case == "tfkd_reg":
        return [{"ce": (1 - c["alpha"]) * c["loss_CE"], "reg": c["alpha"] * c["loss_soft_regu"]} for c in calls]
    return [{"ce": (1 - c["alpha"]) * c["loss_CE"], "kd": c["alpha"] * c["D_KL"]} for c in calls]


def run(case: str, checkout: Path, dtype: torch.dtype, settings: dict | None) -> tuple[list, list]:
    """The official ``train`` (reg) or ``train_kd`` (self) over the planned batches."""
    with scripts.official_run(checkout, ["model", "utils", "my_loss_function"], dtype):
        import my_loss_function
        import utils
        from model import resnet
        holder = nn.Module()
        holder.model = resnet.ResNet18(num_classes=K)
        if case == "tfkd_self":
            holder.teacher_model = resnet.ResNet18(num_classes=K)
        harness.fill_(holder, WEIGHT_SEED)
        optimizer = scripts.sgd({f"model.{n}": p for n, p in holder.model.named_parameters()}, settings, OPTIMIZER)
        namespace = {"utils": utils, "tqdm": scripts.NoProgress, "Variable": Variable, "logging": logging}
        recording.official_functions(checkout / "train_kd.py", ["train", "train_kd"], namespace)
        params = utils.Params(str(checkout / PARAMS[case]))
        loader = [layouts.tensors(entry, dtype)[:2] for entry in PLAN]
        warmup = scripts.NoProgress()  # .step() keeps the lr
        args = argparse.Namespace(regularization=True)
        loss_fn = my_loss_function.loss_kd_regularization if case == "tfkd_reg" else my_loss_function.loss_kd_self
        with recording.LocalsAtReturn(loss_fn) as calls:
            if case == "tfkd_reg":
                namespace["train"](holder.model, optimizer, loss_fn, loader, params, 0, warmup, args)
            else:
                namespace["train_kd"](holder.model, holder.teacher_model, optimizer, loss_fn, loader, warmup, params,
                                      args, 0)
        recorded = scripts.records(optimizer, {})
        for step, split in zip(recorded, terms(case, calls.calls)):
            step["losses"] = {k: float(v) for k, v in split.items()}
    return harness.floating_specs(holder), list(zip(PLAN, recorded))


def base(case: str, checkout: Path) -> dict:
    compared = {"tfkd_reg": "0.9·CE and the KL to the virtual teacher, 2 steps",
                "tfkd_self": "0.05·CE and the KD from the frozen teacher (eval mode), 2 steps"}[case]
    return scripts.fixture_base(f"{case}-cifar_resnet18", case, compared, REPOSITORY, checkout,
                                f"train_kd.py: {'train' if case == 'tfkd_reg' else 'train_kd'}(...), {PARAMS[case]}",
                                side=f"authors.{case}", model="cifar_resnet18", weight_seed=WEIGHT_SEED,
                                shapes={"num_classes": K}, epochs=1)


def main(argv=None) -> None:
    for case in PARAMS:
        scripts.recorder_main(__doc__, "train_kd.py", lambda checkout, c=case: base(c, checkout),
                              lambda checkout, dtype, settings, c=case: run(c, checkout, dtype, settings),
                              OPTIMIZER)(argv)


if __name__ == "__main__":
    main()
