"""Plain cross-entropy and label smoothing: the losses by hand in both smoothing forms."""
import pytest
import torch

from hand import A, PixelNet, as_images, ce, soft_ce
from selfkd.methods import create_method


def test_ce_and_both_label_smoothing_forms_by_hand():
    y = [1, 2]
    out = create_method("ce", PixelNet(3, 3)).train()(as_images(A), torch.tensor(y))
    assert list(out.losses) == ["ce"] and out.loss.item() == pytest.approx(ce(A, y), rel=1e-6)
    others = create_method("ls", PixelNet(3, 3), epsilon=0.2).train()(as_images(A), torch.tensor(y))
    q = [[0.8 if c == t else 0.1 for c in range(3)] for t in y]  # ε/(K−1) on each other class
    assert list(others.losses) == ["ls"] and others.loss.item() == pytest.approx(soft_ce(A, q), rel=1e-6)
    uniform = create_method("ls", PixelNet(3, 3), epsilon=0.2, ls_style="uniform").train()
    uniform = uniform(as_images(A), torch.tensor(y))
    q = [[0.8 + 0.2 / 3 if c == t else 0.2 / 3 for c in range(3)] for t in y]  # ε/K on every class
    assert uniform.loss.item() == pytest.approx(soft_ce(A, q), rel=1e-6)
