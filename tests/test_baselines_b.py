"""Baselines ONE, SAD, DKS, BAKE, MixSKD, Zipf's LS and USKD (baselines.md §11–17): loss values against
hand computations, what is detached, parameter counts, data needs, recipes and short runs that learn."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from selfkd import comm, create_model
from selfkd.config import load_config
from selfkd.data.pipeline import train_sampler
from selfkd.engine import train
from selfkd.errors import ConfigError
from selfkd.losses import non_target_log_softmax
from selfkd.methods import DataNeeds, create_method
from selfkd.methods import mixskd as mixskd_module
from selfkd.methods.bake import ensemble_targets
from selfkd.methods.one import rampup_weight
from selfkd.methods.sad import spatial_attention
from selfkd.methods.zipf import competition_ranks, dense_votes, zipf_targets
from conftest import tiny_config
from hand import ce as _ce, kd as _kl, kd_probs as _kl_probs, softmax as _softmax

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
K = 5  # classes in the hand-computed examples


# ---------------------------------------------------------------- plain-Python maths


def _bce(logits, label):
    """Mean BCE-with-logits of (B, 2) outputs against the one-hot of ``label``."""
    total, rows = 0.0, logits.tolist()
    for row in rows:
        for k, x in enumerate(row):
            sig = 1 / (1 + math.exp(-x))
            total += -math.log(sig) if k == label else -math.log(1 - sig)
    return total / (2 * len(rows))


def _matmul(a, b):
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def _bake_q(embeddings, logits, t, omega):
    """Q = (1−ω) Σ_k ω^k A^k P (the Neumann series of (1−ω)(I−ωA)⁻¹P), in plain Python."""
    h = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in embeddings.tolist()]
    n = len(h)
    a = []
    for i in range(n):
        sims = [math.exp(sum(x * y for x, y in zip(h[i], h[j]))) if j != i else 0.0 for j in range(n)]
        a.append([s / sum(sims) for s in sims])
    term = [_softmax(r, t) for r in logits.tolist()]
    q = [[(1 - omega) * v for v in row] for row in term]
    for k in range(1, 200):
        term = [[omega * v for v in row] for row in _matmul(a, term)]
        q = [[x + (1 - omega) * y for x, y in zip(qr, tr)] for qr, tr in zip(q, term)]
    return q


def _stage_params(cin, c, blocks):
    """A CIFAR ResNet BasicBlock stage whose first block down-samples (1×1 conv + BN shortcut)."""
    first = 9 * cin * c + 9 * c * c + 2 * (2 * c) + cin * c + 2 * c
    return first + (blocks - 1) * (2 * 9 * c * c + 2 * (2 * c))


FC100 = 512 * 100 + 100
S2, S3, S4 = _stage_params(64, 128, 2), _stage_params(128, 256, 2), _stage_params(256, 512, 2)


def _full_resnet18():
    torch.manual_seed(0)
    return create_model("cifar_resnet18", num_classes=100)


def _batch(n=4, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % K


def _grads(loss, params):
    return torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)


def _all_none(grads):
    return all(g is None or not g.abs().sum() for g in grads)


def _all_some(grads):
    return all(g is not None and g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------- shared helper (losses.py)

def test_non_target_log_softmax_by_hand_and_no_target_gradient():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 2])
    out = non_target_log_softmax(logits, targets)
    lse0, lse1 = math.log(math.exp(2) + math.exp(3)), math.log(math.exp(0.5) + math.exp(-1))
    assert out.tolist()[0] == pytest.approx([0.0, 2 - lse0, 3 - lse0], rel=1e-6)
    assert out.tolist()[1] == pytest.approx([0.5 - lse1, -1 - lse1, 0.0], rel=1e-6)
    (torch.tensor([[0.0, 0.3, 0.7], [0.6, 0.4, 0.0]]) * out).sum().backward()
    assert logits.grad[0, 0] == 0 and logits.grad[1, 2] == 0  # the target logit is outside ρ
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ---------------------------------------------------------------- ONE (§11)

def test_one_ramp_values_and_buffer():
    assert rampup_weight(0, 80) == pytest.approx(math.exp(-5))  # ≈ 0.0067
    assert rampup_weight(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert rampup_weight(80, 80) == rampup_weight(150, 80) == 1.0
    assert rampup_weight(0, 0) == 1.0  # rampup_epochs=0: the paper's loss


def test_one_gate_ensemble_and_loss_by_hand(tiny_resnet):
    model = tiny_resnet(num_classes=K)
    method = create_method("one", model, num_classes=K)
    bn = method.gate[1]
    with torch.no_grad():  # non-default BN affine so the hand formula must use it
        bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x, y = _batch()
    method.on_epoch_start(40, 200)
    out = method(x, y)
    with torch.no_grad():
        z1, feats = model(x)
        f3 = feats[2]
        zs = [z1] + [branch(f3)[0] for branch in method.branches]
        a = method.gate[0](f3.mean(dim=(2, 3)))
        a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        gate = [_softmax([max(v, 0.0) for v in row]) for row in a.tolist()]
        ens = torch.tensor([[sum(g[i] * zs[i][b, k].item() for i in range(3)) for k in range(K)]
                            for b, g in enumerate(gate)])
    w = math.exp(-5 * 0.25)
    assert out.losses["ce"].item() == pytest.approx(sum(_ce(z, y) for z in zs), rel=1e-5)
    assert out.losses["ce_ensemble"].item() == pytest.approx(_ce(ens, y), rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(w * sum(_kl(ens, z, 3.0) for z in zs), rel=1e-4, abs=1e-5)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.losses.values()), rel=1e-6)
    assert torch.equal(out.logits, zs[0])

    # w(t) lives in a buffer: the KD term scales with it, the CE terms do not.
    method.on_epoch_start(80, 200)
    later = method(x, y)
    assert later.losses["kd"].item() * w == pytest.approx(out.losses["kd"].item(), rel=1e-5)
    assert later.losses["ce"].item() == pytest.approx(out.losses["ce"].item(), rel=1e-6)


def test_one_gradients_teacher_is_detached_gate_is_not(tiny_resnet):
    method = create_method("one", tiny_resnet(num_classes=K), num_classes=K, rampup_epochs=0)
    out = method(*_batch())
    gate = list(method.gate.parameters())
    assert _all_none(_grads(out.losses["kd"], gate))  # z_e is the (detached) KD teacher
    # (the Linear's bias gets none through the batch-statistics BN that follows it)
    gate_weights = [method.gate[0].weight, method.gate[1].weight, method.gate[1].bias]
    assert _all_some(_grads(out.losses["ce_ensemble"], gate_weights))
    assert _all_some(_grads(out.losses["kd"], method.branches[0].fc.parameters()))
    out.loss.backward()
    assert all(p.grad is not None for p in method.parameters())  # DDP: no unused parameter


def test_one_inference_and_export(tiny_resnet):
    model = tiny_resnet(num_classes=K)
    x, _ = _batch()
    plain = create_method("one", model, num_classes=K).eval()
    assert plain.deployable() is model
    assert torch.equal(plain(x), model.eval()(x)[0])

    method = create_method("one", tiny_resnet(num_classes=K), num_classes=K, eval="ensemble").eval()
    assert method.deployable() is method  # trunk + all branches + gate
    with torch.no_grad():
        z1, feats = method.backbone(x)
        zs = [z1] + [b(feats[2])[0] for b in method.branches]
        lin, bn = method.gate[0], method.gate[1]
        a = (lin(feats[2].mean(dim=(2, 3))) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        g = torch.softmax(torch.relu(a * bn.weight + bn.bias), dim=1)
        expected = sum(g[:, i:i + 1] * zs[i] for i in range(3))
        assert torch.allclose(method.deployable()(x), expected, atol=1e-5)


def test_one_parameter_counts_and_branch_point():
    method = create_method("one", _full_resnet18(), num_classes=100)
    assert method.extra_parameters() == 2 * (S4 + FC100) + (256 * 3 + 3) + 2 * 3 == 16_890_833
    early = create_method("one", _full_resnet18(), num_classes=100, branch_from=2, num_branches=2)
    assert early.extra_parameters() == S3 + S4 + FC100 + (128 * 2 + 2) + 2 * 2
    for bad in (0, 4):
        with pytest.raises(ConfigError, match="branch_from"):
            create_method("one", create_model("cifar_resnet18", num_classes=K, width=8), num_classes=K,
                          branch_from=bad)


# ---------------------------------------------------------------- SAD (§12)

def test_sad_attention_map_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, C=2, 1, 2)
    assert spatial_attention(f).tolist()[0] == pytest.approx(_softmax([5.0, 2.0]), rel=1e-6)  # mean_c f²
    assert spatial_attention(f, "sum").tolist()[0] == pytest.approx(_softmax([10.0, 4.0]), rel=1e-6)


def test_sad_loss_upsamples_the_detached_deeper_map(tiny_resnet):
    method = create_method("sad", tiny_resnet(num_classes=K), num_classes=K)
    shallow = torch.tensor([[[[1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 0.0, 0.0]]]], requires_grad=True)  # (1,1,2,4)
    deeper = torch.tensor([[[[0.0, 2.0]]]], requires_grad=True)  # (1,1,1,2): ×2 bilinear -> [0, .5, 1.5, 2]
    loss = method.attention_loss([shallow, deeper])
    student = _softmax([1, 0, 0, 4, 0, 1, 0, 0])
    teacher = _softmax([0, 0.25, 2.25, 4] * 2)
    assert loss.item() == pytest.approx(sum((s - t) ** 2 for s, t in zip(student, teacher)) / 8, rel=1e-5)
    loss.backward()
    assert deeper.grad is None and shallow.grad.abs().sum() > 0  # the deeper stage is the teacher


def test_sad_three_pairs_weight_and_start_epoch(tiny_resnet):
    model = tiny_resnet(num_classes=K)
    method = create_method("sad", model, num_classes=K, start_epoch=2)
    x, y = _batch()
    with torch.no_grad():
        _, feats = model(x)
        by_hand = 0.0
        for s, d in zip(feats[:-1], feats[1:]):
            up = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
            a_s = torch.softmax(s.pow(2).mean(1).flatten(1), 1)
            a_t = torch.softmax(up.pow(2).mean(1).flatten(1), 1)
            by_hand += ((a_s - a_t) ** 2).mean().item()
    method.on_epoch_start(1, 10)
    assert method(x, y).losses["sad"].item() == 0.0
    method.on_epoch_start(2, 10)
    out = method(x, y)
    assert out.losses["sad"].item() == pytest.approx(1000 * by_hand, rel=1e-4, abs=1e-5)
    assert out.losses["ce"].item() == pytest.approx(_ce(model(x)[0], y), rel=1e-5)
    assert method.extra_parameters() == 0


# ---------------------------------------------------------------- DKS (§13)

@pytest.mark.parametrize("options, t", [({}, 1.0), ({"compat": "selfkdlib"}, 4.0),
                                        ({"compat": "selfkdlib", "temperature": 2.0}, 2.0)])
def test_dks_pairwise_kd_by_hand(tiny_resnet, options, t):
    model = tiny_resnet(num_classes=K)
    method = create_method("dks", model, num_classes=K, **options)
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        z, feats = model(x)
        zs = [z, method.exits[0](feats[1])[0], method.exits[1](feats[2])[0]]
    assert out.losses["ce"].item() == pytest.approx(sum(_ce(v, y) for v in zs), rel=1e-5)
    pairs = sum(_kl(zs[j], zs[i], t) for i in range(3) for j in range(3) if i != j)
    assert out.losses["kd"].item() == pytest.approx(pairs, rel=1e-4, abs=1e-5)
    method.eval()
    assert torch.equal(method(x), model(x)[0])


def test_dks_exit_structure_and_parameters():
    method = create_method("dks", _full_resnet18(), num_classes=100)
    a, b = method.exits
    assert [len(s) for s in a.stages] == [1, 2] and [len(s) for s in b.stages] == [2]
    exit_a = _stage_params(128, 256, 1) + S4 + FC100
    assert method.extra_parameters() == exit_a + S4 + FC100 == 17_809_096
    assert method.deployable() is method.backbone


# ---------------------------------------------------------------- BAKE (§14)

def test_bake_q_closed_form_on_three_samples():
    h = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.0, 5.0]])  # norms differ: only directions count
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [-1.0, 0.0, 3.0]])
    q = ensemble_targets(h, z, temperature=4.0, omega=0.5)
    expected = _bake_q(h, z, 4.0, 0.5)
    for row, exp in zip(q.tolist(), expected):
        assert row == pytest.approx(exp, rel=1e-5)
    assert q.sum(1).tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-6)
    assert not ensemble_targets(h.requires_grad_(), z.requires_grad_(), 4.0, 0.5).requires_grad


@pytest.mark.parametrize("compat", ["official", "selfkdlib"])
def test_bake_loss_by_hand(tiny_resnet, compat):
    model = tiny_resnet(num_classes=K)
    method = create_method("bake", model, num_classes=K, compat=compat)
    x, y = _batch(n=8)
    out = method(x, y)
    with torch.no_grad():
        z, feats = model(x)
        q = _bake_q(feats[-1].mean(dim=(2, 3)), z, 4.0, 0.5)
    if compat == "selfkdlib":  # SKL's double softmax: σ(Q/T) is the target
        q = [_softmax(row, 4.0) for row in q]
    assert out.losses["ce"].item() == pytest.approx(_ce(z, y), rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(_kl_probs(q, z.tolist(), 4.0), rel=1e-4, abs=1e-5)
    assert out.logits.shape == (8, K) and method.extra_parameters() == 0


def test_bake_sampler_matches_the_spec():
    model = create_model("cifar_resnet18", num_classes=10, width=8)
    needs = create_method("bake", model, num_classes=10).data_needs
    assert needs == DataNeeds(class_partners=3, partners_in_batch=True, partners_replace=False, exclude_self=True)
    labels = torch.arange(400) % 10  # 40 images per class
    sampler = train_sampler(labels, 128, needs, seed=0, rank=0, world=1)
    assert len(sampler) == math.ceil(400 / 32)
    batch = next(iter(sampler))
    anchors, partners = batch[:32], batch[32:].view(3, 32)
    assert len(batch) == 128
    assert (labels[partners] == labels[anchors]).all()
    assert (partners != anchors).all()
    assert all(len(set(partners[:, i].tolist())) == 3 for i in range(32))  # without replacement

    skl = create_method("bake", model, num_classes=10, compat="selfkdlib").data_needs
    assert len(next(iter(train_sampler(labels, 128, skl, 0, 0, 1)))) == 512  # SKL: 128 anchors + 384 partners


def test_bake_global_ensemble_keeps_this_ranks_rows(tiny_resnet, monkeypatch):
    model = tiny_resnet(num_classes=K)
    x, y = _batch(n=4)
    with torch.no_grad():
        z, feats = model(x)
    h = feats[-1].mean(dim=(2, 3))
    other_h, other_z = torch.randn(3, h.shape[1]), torch.randn(3, K)  # "rank 0" holds 3 samples

    def gather(t):
        if t.ndim == 1:
            return torch.cat([torch.tensor([3]), t])
        return torch.cat([other_h if t.shape[1] == h.shape[1] else other_z, t])

    monkeypatch.setattr(comm, "is_distributed", lambda: True)
    monkeypatch.setattr(comm, "all_gather_cat", gather)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    q = _bake_q(torch.cat([other_h, h]), torch.cat([other_z, z]), 4.0, 0.5)[3:]
    out = create_method("bake", model, num_classes=K)(x, y)
    assert out.losses["kd"].item() == pytest.approx(_kl_probs(q, z.tolist(), 4.0), rel=1e-4, abs=1e-5)
    local = create_method("bake", model, num_classes=K, global_ke=False)(x, y)
    local_q = _bake_q(h, z, 4.0, 0.5)
    assert local.losses["kd"].item() == pytest.approx(_kl_probs(local_q, z.tolist(), 4.0), rel=1e-4, abs=1e-5)


# ---------------------------------------------------------------- MixSKD (§15)

LAM, PERM = 0.7, torch.tensor([2, 0, 3, 1])


def _fixed_mixup(monkeypatch, x):
    lam = torch.tensor(LAM)
    mixed = lam * x + (1 - lam) * x[PERM]
    monkeypatch.setattr(mixskd_module, "mixup", lambda images, alpha: (mixed, PERM, lam))
    return mixed


def _mix(u):
    return LAM * u[:4] + (1 - LAM) * u[:4][PERM]


def _mix_ce(v, y):
    return LAM * _ce(v, y) + (1 - LAM) * _ce(v, y[PERM])


@pytest.mark.parametrize("compat", ["official", "selfkdlib"])
def test_mixskd_terms_by_hand(tiny_resnet, monkeypatch, compat):
    model = tiny_resnet(num_classes=K)
    method = create_method("mixskd", model, num_classes=K, compat=compat)
    x, y = _batch()
    mixed = _fixed_mixup(monkeypatch, x)
    out = method(x, y)
    with torch.no_grad():
        z4, feats = model(torch.cat([x, mixed]))
        outs = [e(feats[i]) for i, e in enumerate(method.exits)] + [(z4, feats[-1])]
        zs, gs = [o[0] for o in outs], [o[1] for o in outs]
        head = method.teacher_head

        def teacher(maps):  # conv 1×1 (no bias) → GAP → FC
            pooled = torch.einsum("oc,bchw->bo", head.reduce.weight[:, :, 0, 0], maps) / 4  # 2×2 maps
            return pooled @ head.fc.weight.T + head.fc.bias

        t_hat = teacher(torch.cat([_mix(g) for g in gs], 1))
        t_tilde = teacher(torch.cat([g[4:] for g in gs], 1))
        T = 3.0
        kd = _kl(t_tilde, _mix(z4), T) + _kl(t_hat, z4[4:], T)
        kd += sum(_kl(z[4:], _mix(z), T) + _kl(_mix(z), z[4:], T) for z in zs[:3])
        feat = sum(((_mix(g) - g[4:]) ** 2).mean().item() for g in gs)
        d_in = [(_mix(g).mean(dim=(2, 3)), g[4:].mean(dim=(2, 3))) for g in gs]
        ds = method.discriminators
        swapped = sum(_bce(d(m), 1) + _bce(d(g), 0) for d, (m, g) in zip(ds, d_in))
        own = sum(_bce(d(m), 0) + _bce(d(g), 1) for d, (m, g) in zip(ds, d_in))

    assert out.losses["cls"].item() == pytest.approx(sum(_ce(z[:4], y) for z in zs), rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(kd, rel=1e-4, abs=1e-5)
    assert out.losses["feat"].item() == pytest.approx(feat, rel=1e-4, abs=1e-5)
    assert torch.equal(out.logits, z4[:4])
    if compat == "official":
        mcls = sum(_mix_ce(z[4:], y) for z in zs) + _mix_ce(t_hat, y) + _mix_ce(t_tilde, y)
        assert out.losses["mix_cls"].item() == pytest.approx(mcls, rel=1e-5)
        assert out.losses["adv"].item() == pytest.approx(swapped, rel=1e-5)
        assert out.losses["disc"].item() == pytest.approx(own, rel=1e-5)
    else:  # SKL: no mixed CE, frozen D, the network minimises the unswapped BCE
        assert set(out.losses) == {"cls", "kd", "feat", "adv"}
        assert out.losses["adv"].item() == pytest.approx(own, rel=1e-5)


def test_mixskd_discriminators_learn_only_from_their_own_loss(tiny_resnet, monkeypatch):
    method = create_method("mixskd", tiny_resnet(num_classes=K), num_classes=K)
    x, y = _batch()
    _fixed_mixup(monkeypatch, x)
    out = method(x, y)
    d_params = list(method.discriminators.parameters())
    net_params = list(method.backbone.parameters()) + list(method.exits.parameters())
    head = list(method.teacher_head.parameters())
    assert _all_none(_grads(out.losses["adv"], d_params))  # through a parameter-detached view of D
    assert _all_some(_grads(out.losses["adv"], [method.backbone.stages[3][1].conv2.weight]))
    assert _all_none(_grads(out.losses["disc"], net_params + head))  # D reads detached features
    own = _grads(out.losses["disc"], d_params)
    assert _all_some(own)
    assert _all_none(_grads(out.losses["kd"], head))  # t̂, t̃ are KD teachers only
    assert _all_some(_grads(out.losses["mix_cls"], head))  # the fix: the head is trained
    out.loss.backward()
    for p, g in zip(d_params, own):
        assert torch.allclose(p.grad, g)
    assert all(p.grad is not None for p in method.parameters())


def test_mixskd_parameters_compat_and_inference(tiny_resnet):
    full = create_method("mixskd", _full_resnet18(), num_classes=100)
    exits = (S2 + S3 + S4 + FC100) + (S3 + S4 + FC100) + (S4 + FC100)
    head = 2048 * 512 + FC100
    discs = 4 * (512 * 128 + 128 + 128 * 2 + 2)
    assert full.extra_parameters() == exits + head + discs == 31_423_640
    skl = create_method("mixskd", _full_resnet18(), num_classes=100, compat="selfkdlib")
    assert skl.extra_parameters() == exits  # head and discriminators frozen at random init
    assert not any(p.requires_grad for p in skl.discriminators.parameters())

    method = create_method("mixskd", tiny_resnet(num_classes=K), num_classes=K).eval()
    x, _ = _batch()
    assert method.deployable() is method.backbone
    assert torch.equal(method(x), method.backbone(x)[0])


# ---------------------------------------------------------------- Zipf's LS (§16)

def test_zipf_competition_ranks_with_ties():
    assert competition_ranks(torch.tensor([[3.0, 0.0, 5.0, 0.0, 1.0]])).tolist() == [[2, 4, 1, 4, 3]]
    assert competition_ranks(torch.tensor([[0.0, 0.0, 0.0]])).tolist() == [[1, 1, 1]]


def test_zipf_targets_on_votes_with_a_tie():
    pi = zipf_targets(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), torch.tensor([1]))  # ranks 1, 2, 2, 4
    assert pi.tolist()[0] == pytest.approx([1 / 1.75, 0.0, 0.5 / 1.75, 0.25 / 1.75], rel=1e-6)


def test_zipf_dense_votes_by_hand():
    classifier = torch.nn.Linear(2, 3)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        classifier.bias.zero_()
    # positions (1,0)→0, (0,1)→1, (−1,−1)→2, (2,1)→0
    f = torch.tensor([[[[1.0, 0.0], [-1.0, 2.0]], [[0.0, 1.0], [-1.0, 1.0]]]])
    assert dense_votes(f, classifier, 3, None).tolist() == [[2.0, 1.0, 1.0]]
    assert dense_votes(f, classifier, 3, "bilinear").sum().item() == 16  # 2×2 → 4×4 positions
    constant = torch.tensor([[[[0.0]], [[1.0]]]])
    assert dense_votes(constant, classifier, 3, "bilinear").tolist() == [[0.0, 4.0, 0.0]]


def _zipf_by_hand(scores, logits, targets, mask=None):
    total, count = 0.0, 0
    for s, z, y, keep in zip(scores, logits.tolist(), targets.tolist(), mask or [True] * len(scores)):
        ranks = [1 + sum(o > v for o in s) for v in s]
        w = [0.0 if k == y else 1 / r for k, r in enumerate(ranks)]
        pi = [v / sum(w) for v in w]
        others = [k for k in range(len(z)) if k != y]
        lse = math.log(sum(math.exp(z[k]) for k in others))
        if keep:
            total += sum(pi[k] * (math.log(pi[k]) - (z[k] - lse)) for k in others)
            count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("dense", [True, False])
def test_zipf_loss_by_hand(tiny_resnet, dense):
    model = tiny_resnet(num_classes=K)
    method = create_method("zipf_ls", model, num_classes=K, dense=dense)
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        z, feats = model(x)
        if dense:
            up = F.interpolate(feats[-1], scale_factor=2, mode="bilinear", align_corners=False)
            per_position = up.flatten(2).transpose(1, 2) @ model.fc.weight.T + model.fc.bias
            winners = per_position.argmax(2).tolist()
            scores = [[row.count(k) for k in range(K)] for row in winners]
            assert all(sum(s) == 16 for s in scores)  # 2×2 final map at 16 px → 4×4 positions
        else:
            scores = z.tolist()
    assert out.losses["ce"].item() == pytest.approx(_ce(z, y), rel=1e-5)
    assert out.losses["zipf"].item() == pytest.approx(0.1 * _zipf_by_hand(scores, z, y), rel=1e-4, abs=1e-5)
    assert method.extra_parameters() == 0


def test_zipf_loss_mask_averages_over_correct_samples(tiny_resnet):
    model = tiny_resnet(num_classes=K)
    method = create_method("zipf_ls", model, num_classes=K, dense=False, loss_mask=True)
    x, _ = _batch()
    with torch.no_grad():
        z = model(x)[0]
    y = z.argmax(1)
    y[2:] = (y[2:] + 1) % K  # samples 0, 1 correct; 2, 3 wrong
    out = method(x, y)
    expected = _zipf_by_hand(z.tolist(), z, y, mask=[True, True, False, False])
    assert out.losses["zipf"].item() == pytest.approx(0.1 * expected, rel=1e-4, abs=1e-5)


# ---------------------------------------------------------------- USKD (§17)

def _uskd_zeta(logits, weak, targets, rank_on):
    zetas = []
    for z, w_logits, y in zip(logits.tolist(), weak.tolist(), targets.tolist()):
        p, w = _softmax(z), _softmax(w_logits)
        s = p if rank_on == "prob" else [math.log(v) for v in p]
        score = [w[k] / (1 - w[y] + 1e-6) + s[k] / (1 - s[y] + 1e-6) for k in range(len(z))]
        order = sorted(range(len(z)), key=lambda k: -score[k])  # stable: ties keep class order
        value = {k: 1 / (n + 1) for n, k in enumerate(order)}
        raw = [0.0 if k == y else value[k] for k in range(len(z))]
        zetas.append([v / sum(raw) for v in raw])
    return zetas


@pytest.mark.parametrize("rank_on", ["log_prob", "prob"])
def test_uskd_ranking_quirk_and_ties(tiny_resnet, rank_on):
    method = create_method("uskd", tiny_resnet(num_classes=4), num_classes=4, rank_on=rank_on)
    # Row 0: log-prob vs prob order class 2 and 3 differently; row 1: classes 2 and 3 tie exactly.
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [3.0, 1.0, 0.0, 0.0]])
    weak = torch.tensor([[0.0, -1.0, -0.2, 1.8], [0.0, 0.5, 1.0, 1.0]])
    y = torch.tensor([0, 1])
    zeta = method.soft_labels(logits, weak, y)
    for row, exp in zip(zeta.tolist(), _uskd_zeta(logits, weak, y, rank_on)):
        assert row == pytest.approx(exp, rel=1e-6)
    as_log = _uskd_zeta(logits, weak, y, "log_prob")[0]
    as_prob = _uskd_zeta(logits, weak, y, "prob")[0]
    assert as_log != pytest.approx(as_prob)  # the example tells the two rankings apart


def test_uskd_loss_by_hand(tiny_resnet):
    model = tiny_resnet(num_classes=K)
    alpha, beta, mu = 1.0, 0.5, 0.2
    method = create_method("uskd", model, num_classes=K, alpha=alpha, beta=beta, mu=mu)
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        z, feats = model(x)
        weak = feats[2].mean(dim=(2, 3)) @ method.weak_head.weight.T + method.weak_head.bias
    p_y = [_softmax(r)[t] for r, t in zip(z.tolist(), y.tolist())]
    mean_sq = sum(v * v for v in p_y) / 4
    target = -sum((v * v + 1 - mean_sq) * math.log(v) for v in p_y) / 4
    weak_term = 0.0
    for row, t in zip(weak.tolist(), y.tolist()):
        q = [0.9 * (k == t) + 0.1 / K for k in range(K)]
        weak_term -= sum(qk * math.log(pk) for qk, pk in zip(q, _softmax(row))) / 4
    non_target = 0.0
    for zeta, row, t in zip(_uskd_zeta(z, weak, y, "log_prob"), z.tolist(), y.tolist()):
        others = [k for k in range(K) if k != t]
        lse = math.log(sum(math.exp(row[k]) for k in others))
        non_target -= sum(zeta[k] * (row[k] - lse) for k in others) / 4
    assert out.losses["ce"].item() == pytest.approx(_ce(z, y), rel=1e-5)
    assert out.losses["target"].item() == pytest.approx(alpha * target, rel=1e-5)
    assert out.losses["weak"].item() == pytest.approx(mu * weak_term, rel=1e-5)
    assert out.losses["non_target"].item() == pytest.approx(beta * non_target, rel=1e-5)


def test_uskd_gradients_buffer_and_parameters(tiny_resnet):
    method = create_method("uskd", tiny_resnet(num_classes=K), num_classes=K)
    out = method(*_batch())
    head, bb = list(method.weak_head.parameters()), method.backbone
    assert _all_none(_grads(out.losses["weak"], list(bb.stages[3].parameters()) + list(bb.fc.parameters())))
    assert _all_some(_grads(out.losses["weak"], head + [bb.stages[0][0].conv1.weight]))  # undetached F_3
    assert _all_none(_grads(out.losses["non_target"], head))  # the ranking is a constant
    assert "zipf" in dict(method.named_buffers()) and "zipf" not in method.state_dict()
    assert method.zipf.tolist() == pytest.approx([1 / n for n in range(1, K + 1)])
    assert create_method("uskd", _full_resnet18(), num_classes=100).extra_parameters() == 256 * 100 + 100


# ---------------------------------------------------------------- recipes and short runs

@pytest.mark.parametrize("method_name", ["one", "sad", "dks", "bake", "mixskd", "zipf_ls", "uskd"])
def test_recipe_loads_and_builds(method_name):
    cfg = load_config(CONFIGS / f"{method_name}_resnet18.yaml")
    assert cfg.method.name == method_name and cfg.data.dataset == "cifar100" and cfg.model.name == "cifar_resnet18"
    assert cfg.optim.lr == 0.1 and cfg.optim.momentum == 0.9
    model = create_model(cfg.model.name, num_classes=100, width=8)
    create_method(cfg.method.name, model, num_classes=100, **cfg.method.options())


@pytest.mark.parametrize("method_name", ["one", "sad", "dks", "bake", "mixskd", "zipf_ls", "uskd"])
def test_short_run_learns(tmp_path, method_name):
    # 32 steps of 32 images (BAKE: 8 anchors + 24 partners per step, so fewer images), flips only.
    size = 256 if method_name == "bake" else 1024
    cfg = tiny_config(tmp_path, method=method_name, epochs=1,
                      data={"options": {"num_classes": 10, "train_size": size, "test_size": 128, "image_size": 16},
                            "batch_size": 32, "eval_batch_size": 128, "augment": "flip"})
    summary = train(cfg)
    assert summary["final"]["top1"] > 30  # chance is 10 %
    backbone = create_model("cifar_resnet18", num_classes=10, width=8)
    assert summary["params"] == sum(p.numel() for p in backbone.parameters())  # deployable() = the backbone


def test_bake_q_equals_the_linear_solve_for_large_omega():
    torch.manual_seed(0)
    h, z = torch.randn(64, 16), 3 * torch.randn(64, 10)
    hn = torch.nn.functional.normalize(h, dim=1)
    a = torch.softmax(hn @ hn.T - 1e9 * torch.eye(64), dim=1)
    p = torch.softmax(z / 4.0, dim=1)
    solved = 0.1 * torch.linalg.solve(torch.eye(64, dtype=torch.float64) - 0.9 * a.double(), p.double())
    assert torch.allclose(ensemble_targets(h, z, temperature=4.0, omega=0.9).double(), solved, atol=1e-6)
