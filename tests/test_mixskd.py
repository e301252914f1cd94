"""MixSKD: every term by hand in both forms, the discriminators trained only by their own loss, parameter
counts, inference and the recipe."""
import math

import pytest
import torch

from hand import CONFIGS, FC100, S2, S3, S4
from hand import all_none as _all_none
from hand import all_some as _all_some
from hand import batch as _batch
from hand import ce as _ce
from hand import full_resnet18 as _full_resnet18
from hand import grads as _grads
from hand import kd as _kd
from selfkd.config import make_config
from selfkd.methods import create_method
from selfkd.methods import mixskd as mixskd_module

K = 5  # classes in the hand-computed examples


def _bce(logits, label):
    """Mean BCE-with-logits of (B, 2) outputs against the one-hot of ``label``."""
    total, rows = 0.0, logits.tolist()
    for row in rows:
        for k, x in enumerate(row):
            sig = 1 / (1 + math.exp(-x))
            total += -math.log(sig) if k == label else -math.log(1 - sig)
    return total / (2 * len(rows))


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
        kd = _kd(t_tilde, _mix(z4), T) + _kd(t_hat, z4[4:], T)
        kd += sum(_kd(z[4:], _mix(z), T) + _kd(_mix(z), z[4:], T) for z in zs[:3])
        feat = sum(((_mix(g) - g[4:]) ** 2).mean().item() for g in gs)
        d_in = [(_mix(g).mean(dim=(2, 3)), g[4:].mean(dim=(2, 3))) for g in gs]
        ds = method.discriminators
        # one BCE mean over each discriminator's 2B rows [mix(G); G(x̃)] (equal halves: the mean of the halves')
        swapped = sum((_bce(d(m), 1) + _bce(d(g), 0)) / 2 for d, (m, g) in zip(ds, d_in))
        own = sum((_bce(d(m), 0) + _bce(d(g), 1)) / 2 for d, (m, g) in zip(ds, d_in))

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
    assert method.eval_model() is method.backbone
    assert torch.equal(method(x), method.backbone(x)[0])


def test_recipe_loads_and_builds(tiny_resnet):
    cfg = make_config(CONFIGS / "cifar100" / "mixskd_resnet18.yaml")
    assert cfg.method.name == "mixskd" and cfg.data.dataset == "cifar100" and cfg.model.name == "cifar_resnet18"
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.1, 0.9, True, 5e-4)
    assert (cfg.data.batch_size, cfg.train.epochs) == (64, 205)  # 64 originals (+64 mixed), as the official code
    create_method("mixskd", tiny_resnet(100), **cfg.method.options())
