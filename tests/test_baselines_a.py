"""Baselines of baselines.md §3–§10: CS-KD, TF-KD (reg/self), PS-KD, BYOT, DDGSD, DLB, SLA-SD.

Loss values against numbers computed in plain Python here, what each term trains, per-step and
per-epoch state, the data each method declares, recipes, and short end-to-end runs.
"""
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selfkd import create_model
from selfkd.config import load_config
from selfkd.data.datasets import load_dataset
from selfkd.data.pipeline import build_train_loader
from selfkd.engine import train
from selfkd.errors import CheckpointError, ConfigError
from selfkd.methods import DataNeeds, create_method, per_sample_args
from selfkd.methods.cskd import CSKD
from selfkd.methods.ddgsd import DDGSD
from selfkd.methods.dlb import DLB
from selfkd.methods.batch_transforms import rotate_batch
from selfkd.models.base import Backbone
from conftest import tiny_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
A = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.5]]  # hand-chosen logit rows (K = 3)
B = [[2.0, 0.5, 0.0], [0.3, 0.1, 1.0]]


# ---------------------------------------------------------------- plain-Python maths


def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [x / sum(e) for x in e]


def ce(rows, ys):
    return -sum(math.log(softmax(r)[y]) for r, y in zip(rows, ys)) / len(rows)


def soft_ce(rows, targets):
    return -sum(sum(q * math.log(p) for q, p in zip(qs, softmax(r))) for r, qs in zip(rows, targets)) / len(rows)


def assert_rows(tensor, rows, atol=1e-6):
    torch.testing.assert_close(tensor.detach().float(), torch.tensor(rows, dtype=torch.float32), atol=atol, rtol=1e-5)


def kl(q, p):
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p) if qi > 0)


def kd(teacher_rows, student_rows, t):
    """T² · (1/B) Σ_b KL(σ(t_b/T) ‖ σ(s_b/T))."""
    return t * t * sum(kl(softmax(a, t), softmax(b, t)) for a, b in zip(teacher_rows, student_rows)) / len(student_rows)


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


def grads_of(module):
    return [p.grad for p in module.parameters()]


def no_grad_in(module):
    return all(g is None or not g.any() for g in grads_of(module))


def has_grad_in(module):
    return any(g is not None and g.abs().sum() > 0 for g in grads_of(module))


# ---------------------------------------------------------------- CS-KD (§3)


def test_cskd_loss_by_hand_and_partners_get_no_gradient():
    method = CSKD(PixelNet(3, 3), 3).train()
    images = as_images(A, B, requires_grad=True)  # [anchors; partners]
    targets = torch.tensor([1, 2, 1, 2])
    out = method(images, targets)
    assert out.logits.tolist() == A  # anchors only: training accuracy counts anchors
    assert out.losses["ce"].item() == pytest.approx(ce(A, [1, 2]), rel=1e-6)
    assert out.losses["kd"].item() == pytest.approx(kd(B, A, 4.0), rel=1e-5)  # partner teaches anchor, T = 4
    assert out.loss.item() == pytest.approx(ce(A, [1, 2]) + kd(B, A, 4.0), rel=1e-6)
    out.loss.backward()
    assert images.grad[2:].abs().sum() == 0  # the partner pass runs under no_grad
    assert images.grad[:2].abs().sum() > 0


def test_cskd_declares_class_pairs_and_passes_exclude_self(tiny_resnet):
    assert CSKD(tiny_resnet(), 10).data_needs == DataNeeds(class_partners=1)
    assert create_method("cskd", tiny_resnet(), exclude_self=True).data_needs.exclude_self


@pytest.mark.parametrize("exclude_self", [False, True])
def test_cskd_batches_are_anchors_then_same_class_partners(exclude_self, tiny_resnet):
    splits = load_dataset("synthetic", num_classes=4, train_size=64, test_size=8, image_size=16)
    method = create_method("cskd", tiny_resnet(4), exclude_self=exclude_self)
    cfg = load_config(extra={"data.batch_size": 16})
    loader = build_train_loader(splits, cfg.data, method.data_needs, torch.device("cpu"))
    anchors_seen, self_pairs = [], 0
    for batch in loader:
        b = len(batch.index) // 2
        assert len(batch.index) == 2 * b == 2 * 16
        assert torch.equal(batch.targets[:b], batch.targets[b:])  # partner of the same class
        assert torch.equal(splits.train.labels[batch.index], batch.targets)
        self_pairs += int((batch.index[:b] == batch.index[b:]).sum())
        anchors_seen += batch.index[:b].tolist()
    assert sorted(anchors_seen) == list(range(64))  # anchors: one shuffled pass
    if exclude_self:
        assert self_pairs == 0


def test_cskd_run_learns_on_pair_batches(tmp_path, monkeypatch):
    seen = []
    original = CSKD.compute_loss

    def spy(self, images, targets, index=None):
        b = len(targets) // 2
        seen.append((len(targets), bool(torch.equal(targets[:b], targets[b:]))))
        return original(self, images, targets, index)

    monkeypatch.setattr(CSKD, "compute_loss", spy)
    summary = train(quick_config(tmp_path, "cskd"))
    assert seen and all(n == 32 and same for n, same in seen)  # 16 anchors + 16 same-class partners
    assert summary["final"]["top1"] > 50  # chance is 25 %


# ---------------------------------------------------------------- TF-KD-reg (§4)


def _virtual_teacher(y, k=3, a=0.99, tau=20.0):
    u = [a if c == y else (1 - a) / (k - 1) for c in range(k)]
    return softmax(u, tau)


def test_tfkd_reg_official_loss_by_hand():
    method = create_method("tfkd_reg", PixelNet(3, 3)).train()
    z = as_images(A, requires_grad=True)
    out = method(z, torch.tensor([1, 2]))
    q = [_virtual_teacher(1), _virtual_teacher(2)]
    assert q[0][1] == pytest.approx(math.exp(0.99 / 20) / (math.exp(0.99 / 20) + 2 * math.exp(0.005 / 20)))
    reg = sum(kl(qb, softmax(zb)) for qb, zb in zip(q, A)) / 2
    assert out.losses["ce"].item() == pytest.approx(0.9 * ce(A, [1, 2]), rel=1e-6)
    assert out.losses["reg"].item() == pytest.approx(0.1 * reg, rel=1e-5)
    out.losses["reg"].backward()  # d/dz of w·KL_bm(q ‖ σ(z)) = w·(σ(z) − q)/B: q is a constant target
    expected = [[0.1 * (p - qi) / 2 for p, qi in zip(softmax(zb), qb)] for zb, qb in zip(A, q)]
    assert_rows(z.grad.view(2, 3), expected, atol=1e-7)


def test_tfkd_reg_student_temperature_and_selfkdlib_forms():
    y = [1, 2]
    q = [_virtual_teacher(1), _virtual_teacher(2)]
    paper = create_method("tfkd_reg", PixelNet(3, 3), student_temperature=True).train()
    out = paper(as_images(A), torch.tensor(y))
    assert out.losses["reg"].item() == pytest.approx(
        0.1 * sum(kl(qb, softmax(zb, 20.0)) for qb, zb in zip(q, A)) / 2, abs=2e-8)  # σ(z/τ), no τ²
    skl = create_method("tfkd_reg", PixelNet(3, 3), compat="selfkdlib").train()
    assert (skl.ce_weight, skl.reg_weight) == (1.0, 1 / 20)
    out = skl(as_images(A), torch.tensor(y))
    q_ls = [[0.9 if c == yb else 0.05 for c in range(3)] for yb in y]  # LS target, ε = 0.1, K = 3
    scaled = [[v / 20 for v in row] for row in A]
    assert out.losses["ce"].item() == pytest.approx(ce(A, y), rel=1e-6)
    assert out.losses["reg"].item() == pytest.approx(soft_ce(scaled, q_ls) / 20, rel=1e-6)
    with pytest.raises(ConfigError, match="student_temperature"):
        create_method("tfkd_reg", PixelNet(3, 3), compat="selfkdlib", student_temperature=True)


# ---------------------------------------------------------------- TF-KD-self (§5)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A plain-CE run (4 synthetic classes, width 8) whose model.safetensors is the TF-KD-self teacher."""
    tmp = tmp_path_factory.mktemp("teacher")
    train(quick_config(tmp, "ce", run="ce"))
    return tmp / "ce" / "model.safetensors"


def test_tfkd_self_teacher_is_frozen_eval_mode_and_not_deployed(teacher_run, tiny_resnet):
    method = create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(teacher_run))
    saved = load_file(str(teacher_run))
    assert all(torch.equal(saved[k], v) for k, v in method.teacher.state_dict().items())
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert method.extra_parameters() == 0 and method.deployable() is method.backbone
    method.train()
    assert method.backbone.training and not method.teacher.training  # teacher stays in eval mode
    stats = method.teacher.stages[0][0].bn1.running_mean.clone()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    out = method(x, y)
    out.loss.backward()
    assert no_grad_in(method.teacher) and has_grad_in(method.backbone)
    assert torch.equal(method.teacher.stages[0][0].bn1.running_mean, stats)  # BN statistics untouched
    with torch.no_grad():
        zt = method.teacher(x)[0].tolist()  # eval mode, as inside the step
    z = out.logits.tolist()
    assert out.losses["ce"].item() == pytest.approx(0.05 * ce(z, y.tolist()), rel=1e-4)
    assert out.losses["kd"].item() == pytest.approx(0.475 * kd(zt, z, 6.0), rel=1e-4)


def test_tfkd_self_run_learns_and_keeps_the_teacher(teacher_run, tmp_path):
    cfg = quick_config(tmp_path, "tfkd_self", teacher_weights=str(teacher_run))
    summary = train(cfg)
    assert summary["final"]["top1"] > 50 and summary["extra_params"] == 0
    saved = load_file(str(teacher_run))
    state = checkpoint_state(cfg["run_dir"])
    assert all(torch.equal(state[f"teacher.{k}"], v) for k, v in saved.items())  # never trained
    exported = load_file(str(Path(cfg["run_dir"]) / "model.safetensors"))
    assert not any(k.startswith("teacher") for k in exported) and exported.keys() == saved.keys()


def test_tfkd_self_refuses_bad_teacher_files(teacher_run, tmp_path, tiny_resnet):
    good = str(teacher_run)
    with pytest.raises(ConfigError, match="teacher_weights"):
        create_method("tfkd_self", tiny_resnet(4))
    with pytest.raises(CheckpointError, match="No weights file"):
        create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(tmp_path / "missing.safetensors"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"definitely not safetensors")
    with pytest.raises(CheckpointError, match="not a readable"):
        create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(corrupt))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not written by selfkd"):
        create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(foreign))
    with pytest.raises(ConfigError, match="10 classes"):
        create_method("tfkd_self", tiny_resnet(10), teacher_weights=good)
    with pytest.raises(ConfigError, match="preact_resnet18"):
        create_method("tfkd_self", tiny_resnet(4, name="preact_resnet18"), teacher_weights=good)
    with pytest.raises(ConfigError, match="does not fit"):
        create_method("tfkd_self", tiny_resnet(4, width=16), teacher_weights=good)


# ---------------------------------------------------------------- PS-KD (§6)


def test_pskd_alpha_schedule():
    method = create_method("pskd", PixelNet(3, 3), num_samples=5)
    values = []
    for epoch in range(4):
        method.on_epoch_start(epoch, 4)
        values.append(method.alpha.item())
    # epoch 0: the table's weight is 0 (official: rows set to 1_y first); then α_T·(t+1)/E with α_T = 0.8
    assert values == pytest.approx([0.0, 0.4, 0.6, 0.8])


def test_pskd_targets_and_table_writes_by_hand():
    method = create_method("pskd", PixelNet(3, 3), num_samples=5).train()
    method.on_epoch_start(0, 4)
    out = method(as_images(A), torch.tensor([1, 2]), torch.tensor([3, 0]))
    assert out.loss.item() == pytest.approx(ce(A, [1, 2]), rel=1e-6)  # epoch 0 is plain CE
    table = method.table
    assert table[3].tolist() == pytest.approx(softmax(A[0])) and table[0].tolist() == pytest.approx(softmax(A[1]))
    assert not table[[1, 2, 4]].any() and not table.requires_grad
    method.on_epoch_start(1, 4)  # α = 0.4
    z2 = [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]
    out = method(as_images(z2), torch.tensor([2, 1]), torch.tensor([0, 3]))
    onehot = [[0, 0, 1], [0, 1, 0]]
    q = [[0.6 * o + 0.4 * p for o, p in zip(onehot[0], softmax(A[1]))],
         [0.6 * o + 0.4 * p for o, p in zip(onehot[1], softmax(A[0]))]]
    assert out.loss.item() == pytest.approx(soft_ce(z2, q), rel=1e-6)
    assert table[0].tolist() == pytest.approx(softmax(z2[0])) and table[3].tolist() == pytest.approx(softmax(z2[1]))


def test_pskd_half_precision_table_needs_index_and_is_in_state_dict():
    method = create_method("pskd", PixelNet(3, 3), num_samples=7, table_dtype="float16")
    assert method.table.dtype == torch.float16 and method.table.shape == (7, 3)
    assert "table" in method.state_dict() and method.data_needs.index
    assert per_sample_args("pskd", 123) == {"num_samples": 123}
    with pytest.raises(ConfigError, match="index"):
        method.train()(as_images(A), torch.tensor([1, 2]))


def test_pskd_run_learns_fills_the_table_and_resumes_exactly(tmp_path):
    straight = quick_config(tmp_path, "pskd", run="straight", schedule=RESUMABLE)
    summary = train(straight)
    assert summary["final"]["top1"] > 50
    split = quick_config(tmp_path, "pskd", epochs=1, run="split", schedule=RESUMABLE)
    train(split)
    split["train"]["epochs"] = 2
    train(split, resume=True)
    a, b = checkpoint_state(straight["run_dir"]), checkpoint_state(split["run_dir"])
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    table = a["table"]
    assert table.shape == (256, 4) and torch.allclose(table.sum(1), torch.ones(256))  # every sample written
    assert a["alpha"].item() == pytest.approx(0.8)  # last epoch: α_T


# ---------------------------------------------------------------- BYOT (§7)


def test_byot_parameter_counts_full_resnet18():
    model = create_model("cifar_resnet18", num_classes=100)
    byot = create_method("byot", model)
    # conv1x1 C→128 (bias), BN, conv k×k 128→128 (bias), BN, conv1x1 128→512 (bias), BN, FC 512→100
    per_exit = [c * 128 + 128 + 256 + 128 * 128 * k * k + 128 + 256 + 128 * 512 + 512 + 1024 + 512 * 100 + 100
                for c, k in ((64, 8), (128, 4), (256, 2))]
    assert byot.extra_parameters() == sum(per_exit) == 1_791_020
    assert [head.features[3].kernel_size[0] for head in byot.exits] == [8, 4, 2]
    copy = create_method("byot", model, branch="stage_copy")
    block3 = 128 * 256 * 9 + 256 * 256 * 9 + 128 * 256 + 3 * 512  # stage-3 block with its down-sampling
    block4 = 256 * 512 * 9 + 512 * 512 * 9 + 256 * 512 + 3 * 1024
    assert copy.extra_parameters() == (block3 + block4 + 51_300) + (block4 + 51_300) == 8_367_816
    assert copy.deployable() is model


def _byot_by_hand(method, x, y):
    """The default loss written out term by term from the modules' outputs."""
    feats = method.backbone.features(x)
    h4 = feats[-1].mean(dim=(2, 3))
    z4 = method.backbone.fc(h4)
    outs = [(head.fc(head.features(feats[i]).mean(dim=(2, 3))), head.features(feats[i]).mean(dim=(2, 3)))
            for i, head in enumerate(method.exits)]

    def ce_(z):
        return -z.log_softmax(1).gather(1, y[:, None]).mean()

    def kd_(t, s, T):
        q = (t / T).softmax(1)
        return T * T * (q * (q.log() - (s / T).log_softmax(1))).sum() / len(y)

    ce_sum = ce_(z4) + sum(ce_(z) for z, _ in outs)
    kd_sum = sum(kd_(z4, z, 3.0) for z, _ in outs)
    feat = sum((((h - h4) ** 2) * ((h > 0) | (h4 > 0)).float()).sum() for _, h in outs)
    return 0.9 * ce_sum, 0.1 * kd_sum, 1e-6 * feat


def test_byot_loss_and_which_parameters_each_term_trains(tiny_resnet):
    method = create_method("byot", tiny_resnet(10)).train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])
    out = method(x, y)
    with torch.no_grad():
        expected = _byot_by_hand(method, x, y)
    for name, value in zip(("ce", "kd", "feature"), expected):
        assert out.losses[name].item() == pytest.approx(value.item(), rel=1e-4), name
    assert torch.equal(out.logits, method.backbone(x)[0].detach())
    stage4, fc = method.backbone.stages[3], method.backbone.fc
    out.losses["kd"].backward(retain_graph=True)  # teacher z_4 is detached: nothing of stage 4 / fc learns
    assert no_grad_in(stage4) and no_grad_in(fc) and has_grad_in(method.exits)
    method.zero_grad()
    out.losses["feature"].backward(retain_graph=True)  # h_4 is detached too; the exits pull on stages 1-3
    assert no_grad_in(stage4) and no_grad_in(fc)
    assert has_grad_in(method.exits) and has_grad_in(method.backbone.stages[0])
    method.zero_grad()
    out.losses["ce"].backward()
    assert has_grad_in(stage4) and has_grad_in(fc)


def test_byot_stage_copy_loss_and_eval_options(tiny_resnet):
    method = create_method("byot", tiny_resnet(10), branch="stage_copy").train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])
    out = method(x, y)
    with torch.no_grad():
        feats = method.backbone.features(x)
        z = method.backbone.fc(feats[-1].mean(dim=(2, 3)))
        aux = [branch(feats[i]) for branch, i in zip(method.exits, (1, 2))]  # exits from F_2 and F_3
    assert out.losses["ce"].item() == pytest.approx(
        ce(z.tolist(), y.tolist()) + sum(ce(a.tolist(), y.tolist()) for a, _ in aux), rel=1e-4)
    assert out.losses["kd"].item() == pytest.approx(sum(kd(z.tolist(), a.tolist(), 4.0) for a, _ in aux), rel=1e-4)
    mse = sum(((g - feats[-1]) ** 2).mean().item() for _, g in aux)
    assert out.losses["feature"].item() == pytest.approx(0.05 * mse, rel=1e-4)
    with torch.no_grad():
        assert torch.equal(method.eval()(x), method.backbone(x)[0])  # inference: the backbone alone
        ensemble = create_method("byot", tiny_resnet(10), branch="stage_copy", eval="ensemble").eval()
        first = create_method("byot", tiny_resnet(10), branch="stage_copy", eval="exit1").eval()
        first.load_state_dict(ensemble.state_dict())
        feats = ensemble.backbone.features(x)
        z = ensemble.backbone.fc(feats[-1].mean(dim=(2, 3)))
        aux = [branch(feats[i])[0] for branch, i in zip(ensemble.exits, (1, 2))]
        assert torch.allclose(ensemble(x), (z + aux[0] + aux[1]) / 3, atol=1e-6)
        assert torch.allclose(first(x), aux[0])
    with pytest.raises(ConfigError, match="2 auxiliary exits"):
        create_method("byot", tiny_resnet(10), branch="stage_copy", eval="exit3")


# ---------------------------------------------------------------- DDGSD (§8)


def test_ddgsd_loss_by_hand_both_forms():
    v1, v2 = A, [[0.5, 2.5, 0.0], [0.2, -0.5, 1.0]]
    y = [1, 2]
    method = DDGSD(PixelNet(3, 3), 3).train()
    images = as_images(v1, v2, requires_grad=True)
    out = method(images, torch.tensor(y + y))
    assert out.logits.tolist() == v1
    mmd = sum((sum(c1) / 2 - sum(c2) / 2) ** 2 for c1, c2 in zip(zip(*v1), zip(*v2)))  # h = logits here
    assert out.losses["ce"].item() == pytest.approx(ce(v1 + v2, y + y), rel=1e-6)
    assert out.losses["kd"].item() == pytest.approx(kd(v2, v1, 4.0) + kd(v1, v2, 4.0), rel=1e-5)
    assert out.losses["mmd"].item() == pytest.approx(5e-4 * mmd, rel=1e-5)
    out.losses["kd"].backward()  # each view is the student once, its teacher detached: T·(σ(z¹/T) − σ(z²/T))/B
    expected = [[4.0 * (p - q) / 2 for p, q in zip(softmax(a, 4.0), softmax(b, 4.0))] for a, b in zip(v1, v2)]
    assert_rows(images.grad[:2].view(2, 3), expected, atol=1e-6)
    skl = create_method("ddgsd", PixelNet(3, 3), compat="selfkdlib").train()
    out = skl(as_images(v1, v2), torch.tensor(y + y))
    assert out.losses["ce"].item() == pytest.approx(ce(v1 + v2, y + y) / 2, rel=1e-6)
    scalar = (sum(map(sum, v1)) / 6 - sum(map(sum, v2)) / 6) ** 2
    assert out.losses["mmd"].item() == pytest.approx(5e-4 * scalar, rel=1e-5)


def test_two_view_methods_get_independent_views_and_learn(tmp_path, monkeypatch):
    seen = []
    original = DDGSD.compute_loss

    def spy(self, images, targets, index=None):
        b = len(targets) // 2
        seen.append(bool(torch.equal(targets[:b], targets[b:])) and not torch.equal(images[:b], images[b:]))
        return original(self, images, targets, index)

    monkeypatch.setattr(DDGSD, "compute_loss", spy)
    assert DDGSD.data_needs.views == 2 and DLB.data_needs.views == 2
    summary = train(quick_config(tmp_path, "ddgsd"))
    assert seen and all(seen)  # [v¹; v²]: same samples, different augmentations
    assert summary["final"]["top1"] > 50


# ---------------------------------------------------------------- DLB (§9)


def test_dlb_first_step_is_ce_then_last_batch_is_distilled_across_epochs():
    method = create_method("dlb", PixelNet(3, 3)).train()
    v0, v1 = A, [[0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]
    method.on_epoch_start(0, 2)
    out = method(as_images(v0, v1), torch.tensor([1, 2, 1, 2]))
    assert out.logits.tolist() == v0
    assert out.losses["ce"].item() == pytest.approx(ce(v0, [1, 2]), rel=1e-6) and out.losses["kd"].item() == 0
    assert method.prev_images.view(2, 3).tolist() == v1 and method.prev_targets.tolist() == [1, 2]
    assert method.prev_logits.tolist() == v0 and not method.prev_logits.requires_grad
    assert method.prev_logits.data_ptr() != out.logits.data_ptr()  # owned storage, not the graph output
    method.on_epoch_start(1, 2)  # the cache is carried across the epoch boundary
    w0, w1 = [[2.0, 0.0, 0.0]], [[0.0, 0.0, 3.0]]  # a smaller batch
    images = as_images(w0, w1, requires_grad=True)
    out = method(images, torch.tensor([0, 0]))
    assert out.logits.tolist() == w0
    assert out.losses["ce"].item() == pytest.approx(ce(v1 + w0, [1, 2, 0]), rel=1e-6)  # over all 3 rows
    assert out.losses["kd"].item() == pytest.approx(kd(v0, v1, 3.0), rel=1e-5)  # teacher: v⁰ one step earlier
    out.loss.backward()
    assert images.grad[1].abs().sum() == 0 and images.grad[0].abs().sum() > 0  # v¹ waits for the next step
    assert method.prev_images.view(1, 3).tolist() == w1 and method.prev_logits.tolist() == w0


def test_dlb_joint_forward_same_losses_and_cache_in_state_dict():
    batches = [(as_images(A, B), torch.tensor([1, 2, 1, 2])), (as_images(B, A), torch.tensor([0, 1, 0, 1]))]
    results = []
    for joint in (False, True):
        method = create_method("dlb", PixelNet(3, 3), joint_forward=joint).train()
        results.append([v.item() for x, y in batches for v in method(x, y).losses.values()])
    assert results[0] == pytest.approx(results[1]) and results[0][-1] > 0  # ce, kd of both steps
    fresh = create_method("dlb", PixelNet(3, 3))
    fresh.load_state_dict(method.state_dict())  # resizable: the empty cache takes the saved shape
    assert torch.equal(fresh.prev_images, method.prev_images) and torch.equal(fresh.prev_logits, method.prev_logits)


def test_dlb_run_learns_and_resumes_exactly(tmp_path):
    # 248 samples: the last batch of an epoch has 8 images, so the cache changes size across epochs.
    straight = quick_config(tmp_path, "dlb", run="straight", train_size=248, schedule=RESUMABLE)
    summary = train(straight)
    assert summary["final"]["top1"] > 50
    split = quick_config(tmp_path, "dlb", epochs=1, run="split", train_size=248, schedule=RESUMABLE)
    train(split)
    split["train"]["epochs"] = 2
    train(split, resume=True)
    a, b = checkpoint_state(straight["run_dir"]), checkpoint_state(split["run_dir"])
    assert a.keys() == b.keys() and a["prev_images"].shape == (8, 3, 16, 16)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------------------------- SLA-SD (§10)

X1, X2 = [[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [-1.0, 2.0]]
# 0°, 90°, 180°, 270° (torch.rot90 on H–W: [[a, b], [c, d]] -> [[b, d], [a, c]]), flattened
ROT1 = [[1, 2, 3, 4], [2, 4, 1, 3], [4, 3, 2, 1], [3, 1, 4, 2]]
ROT2 = [[0, 1, -1, 2], [1, 2, 0, -1], [2, -1, 1, 0], [-1, 0, 2, 1]]
W_SINGLE = [[0.5, 0.0, -0.5, 0.25], [0.0, 0.5, 0.25, -0.5]]
W_JOINT = [[((r * 4 + c) % 5 - 2) * 0.25 for c in range(4)] for r in range(8)]  # K·M = 2·4 outputs


def _sla(**options):
    method = create_method("sla_sd", PixelNet(4, 2, W_SINGLE), **options)
    with torch.no_grad():
        method.joint.weight.copy_(torch.tensor(W_JOINT))
        method.joint.bias.zero_()
    return method


def _matvec(w, v):
    return [sum(a * b for a, b in zip(row, v)) for row in w]


def test_rotations_are_interleaved_per_sample():
    x = torch.tensor([[X1], [X2]])
    rotated = rotate_batch(x)
    assert rotated.shape == (8, 1, 2, 2)
    assert rotated.flatten(1).tolist() == ROT1 + ROT2


def test_sla_sd_loss_by_hand_and_detached_teacher():
    method = _sla().train()
    y = [1, 0]
    out = method(torch.tensor([[X1], [X2]]), torch.tensor(y))
    g = [[_matvec(W_JOINT, r) for r in rots] for rots in (ROT1, ROT2)]  # g[b][j] = joint logits of rotation j
    s = [_matvec(W_SINGLE, rots[0]) for rots in (ROT1, ROT2)]
    a = [[sum(g[b][j][k * 4 + j] for j in range(4)) / 4 for k in range(2)] for b in range(2)]
    joint_rows = [g[b][j] for b in range(2) for j in range(4)]
    joint_labels = [y[b] * 4 + j for b in range(2) for j in range(4)]
    assert_rows(out.logits, s)
    assert out.losses["joint_ce"].item() == pytest.approx(ce(joint_rows, joint_labels), rel=1e-5)
    assert out.losses["ce"].item() == pytest.approx(ce(s, y), rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(kd(a, s, 1.0), rel=1e-4)
    out.losses["kd"].backward(retain_graph=True)  # the aggregated teacher is detached
    assert no_grad_in(method.joint) and has_grad_in(method.backbone.fc)
    large = _sla(large_loss=True).train()(torch.tensor([[X1], [X2]]), torch.tensor(y))
    assert large.losses["joint_ce"].item() == pytest.approx(4 * ce(joint_rows, joint_labels), rel=1e-5)
    with torch.no_grad():
        assert_rows(_sla().eval()(torch.tensor([[X1], [X2]])), s)
        assert_rows(_sla(eval="aggregate").eval()(torch.tensor([[X1], [X2]])), a)


def test_sla_sd_joint_head_size_and_run_learns(tmp_path):
    method = create_method("sla_sd", create_model("cifar_resnet18", num_classes=100))
    assert method.extra_parameters() == 512 * 400 + 400 and method.deployable() is method.backbone
    summary = train(quick_config(tmp_path, "sla_sd"))
    assert summary["final"]["top1"] > 50


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("method", ["tfkd_reg", "byot"])
def test_short_run_learns(tmp_path, method):
    summary = train(quick_config(tmp_path, method))
    assert summary["final"]["top1"] > 50


@pytest.mark.parametrize("name, options", [
    ("cskd", {"temperature": 0.0}), ("dlb", {"kd_weight": -1.0}), ("pskd", {"num_samples": 4, "alpha_T": 1.5}),
    ("byot", {"feature_weight": -1.0}), ("ddgsd", {"temperature": -4.0}), ("sla_sd", {"temperature": 0.0}),
    ("tfkd_reg", {"correct_prob": 1.2}),
])
def test_bad_hyperparameters_are_refused(tiny_resnet, name, options):
    with pytest.raises(ConfigError):
        create_method(name, tiny_resnet(), **options)


RECIPES = ["ce", "ls", "cskd", "tfkd_reg", "tfkd_self", "pskd", "byot", "ddgsd", "dlb", "sla_sd"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_and_build(name, tiny_resnet):
    cfg = load_config(CONFIGS / f"{name}_resnet18.yaml")
    assert cfg.method.name == name and cfg.model.name == "cifar_resnet18" and cfg.data.dataset == "cifar100"
    assert (cfg.optim.lr, cfg.optim.nesterov, cfg.optim.weight_decay, cfg.data.batch_size) == (0.1, True, 5e-4, 128)
    s = cfg.schedule
    assert (s.name, s.milestones, s.warmup_epochs, s.milestones_after_warmup, cfg.train.epochs) == (
        "multistep", [100, 150], 5, True, 200)
    assert cfg.data.mean == (0.5071, 0.4867, 0.4408) and cfg.data.augment == "crop_flip"
    options = cfg.method.options()
    if name == "tfkd_self":  # the teacher is the CE recipe's exported weights
        ce_run = load_config(CONFIGS / "ce_resnet18.yaml").run_path
        assert Path(options["teacher_weights"]) == ce_run / "model.safetensors"
    else:
        create_method(name, tiny_resnet(100), **options, **per_sample_args(name, 10))


def test_rotations_need_square_images():
    with pytest.raises(ConfigError, match="square"):
        rotate_batch(torch.zeros(2, 3, 4, 6))
