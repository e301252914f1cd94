"""Record the Self-KD-Lib fixtures (winycg/Self-KD-Lib: the CIFAR-100 ResNet-18 benchmark of most baselines, and
the MixSKD authors' code)::

    python tests/fidelity/record_selfkdlib.py --official /path/to/Self-KD-Lib [--out FOLDER] [--only cskd ...]

Each case runs the official training function — ``train`` of ``main.py``, or of ``main_mixskd_cifar.py`` for
MixSKD — on its own (the script's top level, which parses arguments and reads CIFAR-100, is not run), with the
script's argument defaults, for a few steps on the CPU: float64 with SGD steps, float32 (and float64 again) with
the weights fixed (``recording.dtype_runs``). Weights are drawn by ``harness.draw`` in the official ``state_dict``
order. What differs from a run of the scripts, and why:

- ``.cuda()`` returns its object; the loader is a list of batches; printing is silenced; the ``DataParallel``
  wrapper is left out (on the CPU it calls the module unchanged).
- SGD (lr 0.01, momentum 0.9, weight decay 5e-4) instead of the scripts' Nesterov SGD with warm-up: ``adjust_lr``
  keeps the optimizer's lr (the schedule is the script's, not the method's; the selfkd side uses the same SGD).
- Tensors the official code makes float32 explicitly take the run's dtype (:class:`RunDtypeTorch`): PS-KD's
  table, the discriminators' BCE targets; and MixSKD's ``input.float()`` gives the run's dtype.
- MixSKD's draws are pinned: ``np.random.beta`` returns the fixture's λ (float32-exact, as selfkd draws λ in
  float32), ``torch.randperm`` is the first draw after ``torch.manual_seed(perm_seed)``. Its backbone stem has no
  ReLU after the BN, a backbone no selfkd model has: a forward hook on ``backbone.bn1`` adds it (README, Reference
  behaviours).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fidelity import harness, layouts, recording, scripts  # noqa: E402

REPOSITORY = "winycg/Self-KD-Lib"
K, B, SIZE = 10, 4, 16  # classes, primary images per batch, image side (the networks pool adaptively)
WEIGHT_SEED = 1
OPTIMIZER = {"name": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
EPOCHS = 4  # the schedule's length (PS-KD's α_t = α_T·(t+1)/E); only its first epochs are run
PARTNERS, BAKE_ANCHORS = 3, 2  # BAKE: intra-class images per anchor (Self-KD-Lib's --intra-imgs default)
MIX_LAMBDA, PERM_SEED = 0.2734375, 7
SKL_TERMS = {"cls": "loss_cls", "div": "loss_div"}  # main.py's two loss variables
MIXSKD_TERMS = {"cls": "loss_cls", "div": "loss_div", "fea": "loss_fea", "gan": "loss_gan"}  # its total's terms

# case: (--method, --arch, batch layout, batches per epoch, selfkd method, its options, what is compared)
CASES = {
    "ce": ("cross_entropy", "CIFAR_ResNet18", "plain", (1,), "ce", {}, "CE"),
    "ls": ("label_smooth", "CIFAR_ResNet18", "plain", (1,), "ls", {}, "the smoothed CE"),
    "tfkd_reg": ("TF_KD_self_reg", "CIFAR_ResNet18", "plain", (1,), "tfkd_reg", {"compat": "selfkdlib"},
                 "CE and its TF_KD_reg term"),
    "sad": ("SAD", "CIFAR_ResNet18", "plain", (1,), "sad", {}, "CE and the attention term"),
    "dks": ("DKS", "CIFAR_ResNet18_dks", "plain", (1,), "dks", {"compat": "selfkdlib"},
            "the exits' CE and the six KD terms"),
    "byot": ("BYOT", "CIFAR_ResNet18_byot", "plain", (1,), "byot", {"branch": "stage_copy"},
             "the exits' CE, KD and feature terms"),
    "ddgsd": ("DDGSD", "CIFAR_ResNet18", "views", (1,), "ddgsd", {"compat": "selfkdlib"},
              "CE, the two KD terms and the MMD"),
    "cskd": ("CS-KD", "CIFAR_ResNet18", "pairs", (1,), "cskd", {}, "CE and the partner KD (two forwards)"),
    "bake": ("BAKE", "CIFAR_ResNet18", "groups", (2,), "bake", {"compat": "selfkdlib"},
             "CE and the batch-ensemble KD, 2 steps"),
    "pskd": ("PSKD", "CIFAR_ResNet18", "indexed", (2, 2), "pskd", {},
             "the progressive soft-target CE, 2 epochs of 2 steps (the table across the epoch boundary)"),
    "mixskd": (None, "MixSKD_CIFAR_ResNet18", "plain", (1,), "mixskd", {"compat": "selfkdlib"},
               "its total's terms (CE, KD, feature, adversarial) and gradients"),
    "mixskd_default": (None, "MixSKD_CIFAR_ResNet18", "plain", (1,), "mixskd", {},
                       ("values of selfkd's default terms from the official step (no gradients: no official "
                        "script trains that total)")),
}


def official_batch(layout: str, entry: dict, dtype: torch.dtype):
    """One planned batch as the official loader yields it."""
    x, y, index = layouts.tensors(entry, dtype)
    if layout == "views":  # TwoCropsTransform: a list of the two views
        return [x[:B], x[B:]], y
    if layout == "indexed":  # Custom_CIFAR100: (image, [target, index])
        return x, [y, index]
    return x, y


class RunDtypeTorch(types.ModuleType):
    """``torch`` for official code that makes float32 tensors explicitly — main.py's PS-KD table
    (``torch.zeros(..., dtype=torch.float32)``), the discriminators' targets (``torch.FloatTensor``) — which take
    the run's dtype here: in the float64 run a float32 table refuses the float64 predictions written into it, and a
    float32 target makes the BCE's value float32. In the float32 run (as on the GPU) nothing changes."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*size, dtype=None, **kwargs) -> torch.Tensor:
        return torch.zeros(*size, **kwargs)

    @staticmethod
    def FloatTensor(data) -> torch.Tensor:  # noqa: N802 (the official name)
        return torch.tensor(data, dtype=torch.get_default_dtype())


@contextlib.contextmanager
def float_is_run_dtype():
    """``Tensor.float()`` gives the default dtype: main_mixskd_cifar.py casts its batch with ``.float()``, which in
    the float64 run would feed float32 images to a float64 network."""
    saved = torch.Tensor.float
    torch.Tensor.float = lambda self, *args, **kwargs: self.to(torch.get_default_dtype())
    try:
        yield
    finally:
        torch.Tensor.float = saved


def run_main(checkout: Path, case: str, steps: list[dict], dtype: torch.dtype, settings, folder: str):
    """main.py's ``train`` over ``steps``: (official tensor specs, optimizer with its records)."""
    skl_method, arch, layout, per_epoch = CASES[case][:4]
    import methods
    import models
    import utils
    script = checkout / "main.py"
    args = scripts.official_arguments(script, ["--method", skl_method, "--arch", arch, "--epochs", str(EPOCHS)])
    args.checkpoint_dir, args.log_txt = folder, os.path.join(folder, "log.txt")
    net = getattr(models, arch)(num_classes=K)
    harness.fill_(net, WEIGHT_SEED)
    namespace = {name: getattr(methods, name) for name in dir(methods) if not name.startswith("_")}
    namespace.update(torch=RunDtypeTorch(), F=F, nn=nn, os=os, time=time, args=args, net=net, num_classes=K,
                     adjust_lr=scripts.kept_lr, AverageMeter=utils.AverageMeter, correct_num=utils.correct_num)
    recording.official_functions(script, ["train"], namespace)
    optimizer = scripts.sgd(net.named_parameters(), settings, OPTIMIZER)
    criteria = nn.ModuleList([nn.CrossEntropyLoss(), utils.DistillKL(args.T)])
    for epoch in range(len(per_epoch)):
        batches = [official_batch(layout, s, dtype) for s in steps if s["epoch"] == epoch]
        namespace["trainloader"] = scripts.Loader(batches, 2 * B)
        namespace["train"](epoch, criteria, optimizer)
    return harness.floating_specs(net), optimizer


def run_mixskd(checkout: Path, steps: list[dict], dtype: torch.dtype, settings, folder: str):
    """main_mixskd_cifar.py's ``train`` (one step); the discriminators are drawn after the network. Returns
    (specs, optimizer, the official ``discriminatorLoss``)."""
    import methods
    import models
    import utils
    script = checkout / "main_mixskd_cifar.py"
    args = scripts.official_arguments(script)
    net = models.MixSKD_CIFAR_ResNet18(num_classes=K)
    net.backbone.bn1.register_forward_hook(lambda module, inputs, output: F.relu(output))  # selfkd's stem ReLU
    methods.adversarial.torch = RunDtypeTorch()
    gan = methods.discriminatorLoss([net.backbone.fc.in_features] * 4)
    holder = nn.Module()  # the discriminators sit in a plain list; name them for the draw
    holder.net, holder.gan = net, nn.ModuleList(gan.classifier)
    harness.fill_(holder, WEIGHT_SEED)
    pinned = types.SimpleNamespace(random=types.SimpleNamespace(beta=lambda a, b: MIX_LAMBDA))
    namespace = {"torch": torch, "F": F, "np": pinned, "time": time, "args": args, "net": net, "num_stage": 4,
                 "log_txt": os.path.join(folder, "log.txt"), "adjust_lr": scripts.kept_lr,
                 "AverageMeter": utils.AverageMeter, "correct_num": utils.correct_num}
    recording.official_functions(script, ["mixup_data", "mixup_criterion", "train"], namespace)
    optimizer = scripts.sgd({f"net.{n}": p for n, p in net.named_parameters()}, settings, OPTIMIZER)
    namespace["trainloader"] = scripts.Loader([official_batch("plain", s, dtype) for s in steps], B)
    torch.manual_seed(PERM_SEED)
    with float_is_run_dtype():
        namespace["train"](0, nn.ModuleList([nn.CrossEntropyLoss(), utils.DistillKL(args.kd_T), gan]), optimizer)
    return harness.floating_specs(holder), optimizer, gan


def mixskd_default(optimizer, gan) -> list[dict]:
    """The terms of selfkd's default MixSKD read from the official step, without gradients (no official script
    trains that total): the CIFAR script's terms, its mixed CE (computed there but left out of its total; the
    ImageNet script adds it), and its ``discriminatorLoss`` called with the two feature lists swapped — the
    discriminators' labels swapped, the network's loss in the adversarial game. The total is their sum."""
    out = []
    for _, local in optimizer.steps:
        with torch.no_grad():
            swapped = gan(local["mixup_features"], local["ensemble_features"])
        terms = {**{k: local[v] for k, v in MIXSKD_TERMS.items()}, "mixcls": local["loss_mixcls"],
                 "gan_swapped": swapped}
        out.append(harness.step_record(terms, sum(float(v) for v in terms.values()), {}))
    return out


def run(checkout: Path, case: str, steps: list[dict], dtype: torch.dtype, settings):
    """One official run: (official tensor specs, [(batch, step record), ...])."""
    with scripts.default_dtype(dtype), recording.cpu_only(), scripts.quiet(), \
            tempfile.TemporaryDirectory() as folder, scripts.on_path(checkout, ["methods", "models", "utils"]):
        if case.startswith("mixskd"):
            specs, optimizer, gan = run_mixskd(checkout, steps, dtype, settings, folder)
            recorded = mixskd_default(optimizer, gan) if case == "mixskd_default" else \
                scripts.records(optimizer, MIXSKD_TERMS)
        else:
            specs, optimizer = run_main(checkout, case, steps, dtype, settings, folder)
            recorded = scripts.records(optimizer, SKL_TERMS)
    return specs, list(zip(steps, recorded))


def base(checkout: Path, case: str) -> dict:
    """What the float64 and float32 fixtures of ``case`` share."""
    skl_method, arch, layout, _, method, options, compared = CASES[case]
    if case.startswith("mixskd"):
        entry, model = "main_mixskd_cifar.py: train(epoch, criterion_list, optimizer)", "cifar_resnet18"
        extra = {"mixup": {"lambda": MIX_LAMBDA, "perm_seed": PERM_SEED}}
    else:
        entry, model, extra = f"main.py: train(epoch, criterion_list, optimizer), --method {skl_method}", \
            "preact_resnet18", {}
    needed = ", ".join(f"{k}={v}" for k, v in options.items()) or "none"
    return {"case": f"selfkdlib-{case}", "method": method, "task": "classification",
            "selfkd_side": f"selfkdlib.{case}", "compared": compared, "options_needed": needed,
            "reference": {"repository": REPOSITORY, "commit": recording.commit_of(checkout), "entry": entry,
                          "arch": arch},
            "options": options, "model": model, "layout": layout, "weight_seed": WEIGHT_SEED,
            "shapes": {"num_classes": K, "num_samples": 2 * B, "partners": PARTNERS}, "epochs": EPOCHS, **extra}


def main(argv=None) -> None:
    only = argparse.ArgumentParser(add_help=False)
    only.add_argument("--only", nargs="+", choices=list(CASES), default=list(CASES), help="cases to record")
    chosen, rest = only.parse_known_args(sys.argv[1:] if argv is None else argv)
    args = recording.arguments(__doc__.splitlines()[0], rest)
    recording.official_path(args.official, "main_mixskd_cifar.py")
    torch.set_num_threads(1)
    checkout = args.official.resolve()
    for case in chosen.only:
        layout, per_epoch = CASES[case][2:4]
        steps = layouts.plan(layout, per_epoch, BAKE_ANCHORS * (PARTNERS + 1) if layout == "groups" else B, K, SIZE,
                             PARTNERS)
        runs = recording.dtype_runs(lambda dtype, settings, c=case, s=steps: run(checkout, c, s, dtype, settings),
                                    OPTIMIZER)
        for run_ in runs:
            recording.write(args.out, recording.fixture(base(checkout, case), run_))


if __name__ == "__main__":
    main()
