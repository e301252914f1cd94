"""PS-KD: the α schedule, targets and table writes by hand, the table's dtype and state, and a run that learns and
resumes exactly."""
import pytest
import torch

from hand import A, PixelNet, as_images, assert_resumes_exactly, ce, soft_ce, softmax
from selfkd.errors import ConfigError
from selfkd.methods import create_method, data_args


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
    assert data_args("pskd", 123) == {"num_samples": 123}
    with pytest.raises(ConfigError, match="index"):
        method.train()(as_images(A), torch.tensor([1, 2]))


def test_pskd_run_learns_fills_the_table_and_resumes_exactly(tmp_path):
    summary, state = assert_resumes_exactly(tmp_path, "pskd")
    assert summary["final"]["top1"] > 50
    table = state["table"]
    assert table.shape == (256, 4) and torch.allclose(table.sum(1), torch.ones(256))  # every sample written
    assert state["alpha"].item() == pytest.approx(0.8)  # last epoch: α_T
