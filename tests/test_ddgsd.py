"""DDGSD: the loss by hand in both forms, two independent views per sample and a run that learns."""
import pytest
import torch

from hand import A, PixelNet, as_images, assert_rows, ce, kd, quick_config, softmax
from selfkd.engine import train
from selfkd.methods import create_method
from selfkd.methods.ddgsd import DDGSD
from selfkd.methods.dlb import DLB


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


def test_ddgsd_run_gets_two_independent_views_and_learns(tmp_path, monkeypatch):
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
