"""USKD: the customised soft labels (both rankings, ties), the loss by hand and what each term trains."""
import math

import pytest
import torch

from hand import all_none as _all_none
from hand import all_some as _all_some
from hand import batch as _batch
from hand import ce as _ce
from hand import full_resnet18 as _full_resnet18
from hand import grads as _grads
from hand import softmax as _softmax
from selfkd.methods import create_method

K = 5  # classes in the hand-computed examples


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
