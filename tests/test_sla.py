"""SLA-SD: the rotations, the loss by hand with its detached aggregated teacher, the evaluation options, the
joint head's size and a run that learns."""
import pytest
import torch

from hand import PixelNet, assert_rows, ce, has_grad_in, kd, no_grad_in, quick_config
from selfkd import create_model
from selfkd.engine import train
from selfkd.errors import ConfigError
from selfkd.methods import create_method
from selfkd.methods.parts.batch_transforms import rotate_batch

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


def test_rotations_need_square_images():
    with pytest.raises(ConfigError, match="square"):
        rotate_batch(torch.zeros(2, 3, 4, 6))


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
    assert method.extra_parameters() == 512 * 400 + 400 and method.eval_model() is method.backbone
    summary = train(quick_config(tmp_path, "sla_sd"))
    assert summary["final"]["top1"] > 50
