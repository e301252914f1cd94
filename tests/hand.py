"""Shared helpers of the method tests: reference maths in plain Python (lists of floats, or tensors converted to
lists) for checking the library's losses against values computed independently of it, a backbone whose logits
are its input (so losses can be computed by hand), gradient checks, and the short runs and recipe checks that
every method's test file uses; and tiny dataset folders in their published layouts."""
import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import nn

from conftest import tiny_config
from selfkd import create_model
from selfkd.config import make_config
from selfkd.engine import train
from selfkd.methods import create_method, data_args
from selfkd.models.base import Backbone

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ---------------------------------------------------------------- plain-Python maths


def _rows(x):
    return x.tolist() if hasattr(x, "tolist") else x


def softmax(row, t=1.0):
    row = _rows(row)
    m = max(row)
    e = [math.exp((v - m) / t) for v in row]
    return [x / sum(e) for x in e]


def ce(logit_rows, labels):
    """Mean cross-entropy."""
    rows, labels = _rows(logit_rows), _rows(labels)
    return sum(-math.log(softmax(r)[y]) for r, y in zip(rows, labels)) / len(rows)


def soft_ce(rows, targets):
    """Mean soft-target cross-entropy ``−(1/B) Σ_b Σ_k q_bk log σ(z_b)_k``."""
    rows = _rows(rows)
    return -sum(sum(q * math.log(p) for q, p in zip(qs, softmax(r))) for r, qs in zip(rows, targets)) / len(rows)


def kl(q, p):
    """KL(q ‖ p) of two probability lists, with 0·log 0 = 0."""
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p) if qi > 0)


def kd_probs(q_rows, student_rows, t):
    """T² · (1/B) Σ_b Σ_k q_bk (log q_bk − log σ(s_b/T)_k), with 0·log 0 = 0."""
    q_rows, student_rows = _rows(q_rows), _rows(student_rows)
    total = 0.0
    for q, s in zip(q_rows, student_rows):
        p = softmax(s, t)
        total += sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p) if qi > 0)
    return t * t * total / len(q_rows)


def kd(teacher_rows, student_rows, t):
    """T² · (1/B) Σ_b KL(σ(teacher_b/T) ‖ σ(student_b/T))."""
    return kd_probs([softmax(r, t) for r in _rows(teacher_rows)], student_rows, t)


def assert_rows(tensor, rows, atol=1e-6):
    torch.testing.assert_close(tensor.detach().float(), torch.tensor(rows, dtype=torch.float32), atol=atol, rtol=1e-5)


# ---------------------------------------------------------------- a backbone for losses by hand

A = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.5]]  # hand-chosen logit rows (K = 3)
B = [[2.0, 0.5, 0.0], [0.3, 0.1, 1.0]]


class PixelNet(Backbone):
    """A backbone without BN whose logits are ``fc(flattened pixels)``: with ``fc`` the identity and
    (B, K, 1, 1) images, the images *are* the logits, so losses can be checked by hand."""

    name = "pixelnet"

    def __init__(self, pixels: int, num_classes: int, weight=None):
        super().__init__()
        self.stem, self.stages = nn.Identity(), nn.ModuleList([nn.Identity()])
        self.stage_channels, self.stage_reductions = [pixels], [1]
        self.fc = nn.Linear(pixels, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(num_classes, pixels) if weight is None else torch.tensor(weight))
            self.fc.bias.zero_()

    def embed(self, last):
        return last.flatten(1)


def as_images(*blocks, requires_grad=False):
    """Logit rows -> (N, K, 1, 1) images for PixelNet (blocks are concatenated in order)."""
    rows = [r for block in blocks for r in block]
    return torch.tensor(rows).view(len(rows), -1, 1, 1).requires_grad_(requires_grad)


def batch(n=4, size=16, seed=1, classes=5):
    """``n`` random images and the labels ``0, 1, …`` modulo ``classes``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % classes


def full_resnet18():
    torch.manual_seed(0)
    return create_model("cifar_resnet18", num_classes=100)


def stage_params(cin, c, blocks):
    """Parameters of a CIFAR ResNet BasicBlock stage whose first block down-samples (1×1 conv + BN shortcut)."""
    first = 9 * cin * c + 9 * c * c + 2 * (2 * c) + cin * c + 2 * c
    return first + (blocks - 1) * (2 * 9 * c * c + 2 * (2 * c))


FC100 = 512 * 100 + 100  # the final Linear of a ResNet-18 with K = 100
S2, S3, S4 = stage_params(64, 128, 2), stage_params(128, 256, 2), stage_params(256, 512, 2)


# ---------------------------------------------------------------- which parameters a term trains


def grads(loss, params):
    """Gradients of ``loss`` w.r.t. ``params`` (None where unused), keeping the graph."""
    return torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)


def all_none(gradients):
    return all(g is None or not g.abs().sum() for g in gradients)


def all_some(gradients):
    return all(g is not None and g.abs().sum() > 0 for g in gradients)


def no_grad_in(module):
    """After a backward: no parameter of ``module`` received a non-zero gradient."""
    return all(p.grad is None or not p.grad.any() for p in module.parameters())


def has_grad_in(module):
    """After a backward: some parameter of ``module`` received a non-zero gradient."""
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# ---------------------------------------------------------------- runs and recipes

# Resume tests compare "1 epoch, then resume to 2" with "2 epochs": the lr must not depend on the run
# length (a cosine over 1 epoch is not the first half of one over 2); x0.1 after epoch 1 still learns.
RESUMABLE = {"name": "multistep", "milestones": [1], "gamma": 0.1}


def quick_config(tmp_path, method, epochs=2, run="run", train_size=256, schedule=None, **options):
    """A seconds-long run: 4 synthetic classes (chance 25 %), 16x16 images with random flips, batches of 16."""
    cfg = tiny_config(tmp_path, method=method, epochs=epochs, optim={"lr": 0.05},
                      schedule=schedule or {"name": "cosine"},
                      data={"options": {"num_classes": 4, "train_size": train_size, "test_size": 64, "image_size": 16},
                            "augment": "flip", "batch_size": 16, "eval_batch_size": 64})
    cfg["method"].update(options)
    cfg["run_dir"] = str(tmp_path / run)
    return cfg


def checkpoint_state(run_dir):
    return torch.load(Path(run_dir) / "last.pt", weights_only=True)["method_state"]


def assert_resumes_exactly(tmp_path, method, **options):
    """A 2-epoch run and a 1-epoch run resumed to 2 (``quick_config(..., **options)``) end with the same method
    state; returns the 2-epoch run's summary and that state."""
    straight = quick_config(tmp_path, method, run="straight", schedule=RESUMABLE, **options)
    summary = train(straight)
    split = quick_config(tmp_path, method, epochs=1, run="split", schedule=RESUMABLE, **options)
    train(split)
    split["train"]["epochs"] = 2
    train(split, resume=True)
    a, b = checkpoint_state(straight["run_dir"]), checkpoint_state(split["run_dir"])
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return summary, a


def assert_one_epoch_learns(tmp_path, method_name):
    """32 steps of 32 images (BAKE: 8 anchors + 24 partners per step, so fewer images), flips only: the run
    beats chance by far and exports the plain backbone."""
    size = 256 if method_name == "bake" else 1024
    cfg = tiny_config(tmp_path, method=method_name, epochs=1,
                      data={"options": {"num_classes": 10, "train_size": size, "test_size": 128, "image_size": 16},
                            "batch_size": 32, "eval_batch_size": 128, "augment": "flip"})
    summary = train(cfg)
    assert summary["final"]["top1"] > 30  # chance is 10 %
    backbone = create_model("cifar_resnet18", num_classes=10, width=8)
    assert summary["params"] == sum(p.numel() for p in backbone.parameters())  # eval_model() = the backbone


def assert_selfkdlib_recipe(name, tiny_resnet=None):
    """``configs/cifar100/<name>_resnet18.yaml``: CIFAR-100, CIFAR ResNet-18 and Self-KD-Lib's reference recipe
    (SGD lr 0.1, momentum 0.9, Nesterov, wd 5e-4, batch 128, 200 epochs, 5 warm-up epochs then x0.1 at 100/150,
    crop + flip, CIFAR-100 statistics). With ``tiny_resnet``, the method is built from the recipe's options;
    returns the config."""
    cfg = make_config(CONFIGS / "cifar100" / f"{name}_resnet18.yaml")
    assert cfg.method.name == name and cfg.model.name == "cifar_resnet18" and cfg.data.dataset == "cifar100"
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay, cfg.data.batch_size) == (
        0.1, 0.9, True, 5e-4, 128)
    s = cfg.schedule
    assert (s.name, s.milestones, s.warmup_epochs, s.milestones_after_warmup, cfg.train.epochs) == (
        "multistep", [100, 150], 5, True, 200)
    assert cfg.data.mean == (0.5071, 0.4867, 0.4408) and cfg.data.augment == "crop_flip"
    if tiny_resnet is not None:
        create_method(name, tiny_resnet(100), **cfg.method.options(), **data_args(name, 10))
    return cfg


# ---------------------------------------------------------------- tiny dataset folders


def write_idx(path, array) -> None:
    """A gzipped IDX file (Fashion-MNIST's format) of unsigned bytes: magic 0, 0, 8, ndim, big-endian sizes, data."""
    array = np.asarray(array)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder: Path, n_train=5, n_test=3, seed=0):
    """Fashion-MNIST's four files with random images and labels; returns {prefix: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def write_fashion_rectangles(folder: Path, n_train=30, n_test=10) -> None:
    """Fashion-MNIST's four files whose items are one 16x12 rectangle (intensity 200 in training, 100 in test) on
    black, labels 0, 1, ... modulo 10: items the scene composer cuts out exactly."""
    folder.mkdir(parents=True)
    for prefix, n, value in (("train", n_train, 200), ("t10k", n_test, 100)):
        items = np.zeros((n, 28, 28), np.uint8)
        items[:, 6:22, 8:20] = value
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", items)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def write_image_folder(root: Path, train=1, val=(1, 1)) -> None:
    """The imagefolder layout with 8x8 PNGs ``0.png, 1.png, ...``: ``train`` images in each of the classes cat and
    dog, ``val`` images of each; dog images are brighter (noise in [0, 60) plus 120)."""
    from torchvision.io import encode_png, write_file

    gen = torch.Generator().manual_seed(0)
    for split, counts in (("train", (train, train)), ("val", val)):
        for label, (name, count) in enumerate(zip(("cat", "dog"), counts)):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                image = (torch.randint(0, 60, (3, 8, 8), generator=gen) + 120 * label).to(torch.uint8)
                write_file(str(root / split / name / f"{k}.png"), encode_png(image))
