"""Shared loss maths against hand-computed numbers."""
import math

import pytest
import torch

from hand import ce as _ce_by_hand
from hand import kd as _kd_by_hand
from hand import softmax as _softmax
from selfkd.losses import (
    attention_map,
    kd_loss,
    kd_prob_loss,
    mixed_cross_entropy,
    non_target_log_softmax,
    smoothed_targets,
    soft_cross_entropy,
)


def test_kd_loss_matches_hand_computation():
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
    student = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, -2.0]])
    T = 4.0
    total = 0.0
    for t_row, s_row in zip(teacher.tolist(), student.tolist()):
        q, p = _softmax(t_row, T), _softmax(s_row, T)
        total += sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p))
    expected = T * T * total / 2  # batchmean: sum over classes, mean over the 2 rows
    assert kd_loss(teacher, student, T).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_direction_and_detach():
    teacher = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    student = torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)
    kd_loss(teacher, student, 2.0).backward()
    assert teacher.grad is None  # the teacher is a constant target
    assert student.grad.abs().sum() > 0
    # KL is not symmetric: swapping the arguments changes the value.
    assert kd_loss(teacher, student, 2.0).item() != pytest.approx(kd_loss(student, teacher, 2.0).item())


def test_kd_prob_loss_handles_zero_probabilities():
    q = torch.tensor([[1.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 1.0, 2.0]])
    expected = -math.log(_softmax([0.0, 1.0, 2.0])[0])  # 1·(log 1 − log p_0)
    assert kd_prob_loss(q, s).item() == pytest.approx(expected, rel=1e-6)


def test_soft_cross_entropy_and_smoothing():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    q = smoothed_targets(torch.tensor([2]), 4, 0.1)
    assert q.tolist()[0] == pytest.approx([0.1 / 3, 0.1 / 3, 0.9, 0.1 / 3])
    uniform = smoothed_targets(torch.tensor([2]), 4, 0.1, "uniform")
    assert uniform.tolist()[0] == pytest.approx([0.025, 0.025, 0.925, 0.025])
    p = _softmax([1.0, 2.0, 3.0, 4.0])
    expected = -sum(qi * math.log(pi) for qi, pi in zip(q.tolist()[0], p))
    assert soft_cross_entropy(logits, q).item() == pytest.approx(expected, rel=1e-6)
    # PyTorch's label_smoothing is the "uniform" form.
    torch_ls = torch.nn.functional.cross_entropy(logits, torch.tensor([2]), label_smoothing=0.1)
    assert soft_cross_entropy(logits, uniform).item() == pytest.approx(torch_ls.item(), rel=1e-6)


def test_attention_map_is_normalised_channel_mean_of_squares():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2 channels, 1, 2)
    raw = [(1 + 9) / 2, (4 + 0) / 2]  # mean over channels of f²
    norm = math.sqrt(sum(v * v for v in raw))
    assert attention_map(f).tolist()[0] == pytest.approx([v / norm for v in raw])


def test_kd_loss_direction_temperature_squared_and_batchmean():
    teacher = [[1.0, 2.0, 0.0], [3.0, -1.0, 0.5]]
    student = [[0.0, 1.0, 3.0], [1.0, 1.0, -2.0]]
    t = 4.0
    value = kd_loss(torch.tensor(teacher), torch.tensor(student), t).item()
    assert value == pytest.approx(_kd_by_hand(teacher, student, t), rel=1e-5)
    assert value != pytest.approx(_kd_by_hand(student, teacher, t), rel=1e-3)  # KL(teacher ‖ student), not reversed
    # batchmean: the mean of the per-row values, not divided by K too
    rows = [kd_loss(torch.tensor([a]), torch.tensor([b]), t).item() for a, b in zip(teacher, student)]
    assert value == pytest.approx(sum(rows) / 2, rel=1e-5)


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


def test_mixed_cross_entropy_by_hand():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    targets, perm, lam = torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor(0.3)
    rows = logits.tolist()
    expected = 0.3 * _ce_by_hand(rows, [0, 2]) + 0.7 * _ce_by_hand(rows, [2, 0])
    assert mixed_cross_entropy(logits, targets, perm, lam).item() == pytest.approx(expected, rel=1e-6)
