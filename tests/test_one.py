"""ONE: the ramp, the gate and ensemble by hand, what is detached, inference and export, and parameter counts."""
import math

import pytest
import torch

from hand import FC100, S3, S4
from hand import all_none as _all_none
from hand import all_some as _all_some
from hand import batch as _batch
from hand import ce as _ce
from hand import full_resnet18 as _full_resnet18
from hand import grads as _grads
from hand import kd as _kd
from hand import softmax as _softmax
from selfkd import create_model
from selfkd.errors import ConfigError
from selfkd.losses import rampup_weight
from selfkd.methods import create_method

K = 5  # classes in the hand-computed examples


def test_one_rampup_weight_values():
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
    assert out.losses["kd"].item() == pytest.approx(w * sum(_kd(ens, z, 3.0) for z in zs), rel=1e-4, abs=1e-5)
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
    assert plain.eval_model() is model
    assert torch.equal(plain(x), model.eval()(x)[0])

    method = create_method("one", tiny_resnet(num_classes=K), num_classes=K, eval="ensemble").eval()
    assert method.eval_model() is method  # trunk + all branches + gate
    with torch.no_grad():
        z1, feats = method.backbone(x)
        zs = [z1] + [b(feats[2])[0] for b in method.branches]
        lin, bn = method.gate[0], method.gate[1]
        a = (lin(feats[2].mean(dim=(2, 3))) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        g = torch.softmax(torch.relu(a * bn.weight + bn.bias), dim=1)
        expected = sum(g[:, i:i + 1] * zs[i] for i in range(3))
        assert torch.allclose(method.eval_model()(x), expected, atol=1e-5)


def test_one_parameter_counts_and_branch_point():
    method = create_method("one", _full_resnet18(), num_classes=100)
    assert method.extra_parameters() == 2 * (S4 + FC100) + (256 * 3 + 3) + 2 * 3 == 16_890_833
    early = create_method("one", _full_resnet18(), num_classes=100, branch_from=2, num_branches=2)
    assert early.extra_parameters() == S3 + S4 + FC100 + (128 * 2 + 2) + 2 * 2
    for bad in (0, 4):
        with pytest.raises(ConfigError, match="branch_from"):
            create_method("one", create_model("cifar_resnet18", num_classes=K, width=8), num_classes=K,
                          branch_from=bad)
