"""DLB: the last batch re-trained and distilled by hand (across epochs and batch sizes), the joint forward, the
cache in the state, and a run that learns and resumes exactly."""
import pytest
import torch

from hand import A, B, PixelNet, as_images, assert_resumes_exactly, ce, kd
from selfkd.methods import create_method


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
    summary, state = assert_resumes_exactly(tmp_path, "dlb", train_size=248)
    assert summary["final"]["top1"] > 50
    assert state["prev_images"].shape == (8, 3, 16, 16)
