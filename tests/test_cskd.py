"""CS-KD: the loss by hand, the partner pass without gradient, the pair batches and a run."""
import pytest
import torch

from hand import A, B, PixelNet, as_images, ce, kd, quick_config
from selfkd.config import make_config
from selfkd.data.datasets import load_dataset
from selfkd.data.pipeline import build_train_loader
from selfkd.engine import train
from selfkd.methods import DataNeeds, create_method
from selfkd.methods.cskd import CSKD


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
    cfg = make_config(overrides=["data.batch_size=16"])
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
