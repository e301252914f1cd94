"""Zipf's LS: ranks with ties, Zipf targets, dense votes and the loss by hand (with the correct-only mask)."""
import math

import pytest
import torch
import torch.nn.functional as F

from hand import batch as _batch
from hand import ce as _ce
from selfkd.methods import create_method
from selfkd.methods.zipf import competition_ranks, dense_votes, zipf_targets

K = 5  # classes in the hand-computed examples


def test_zipf_competition_ranks_with_ties():
    assert competition_ranks(torch.tensor([[3.0, 0.0, 5.0, 0.0, 1.0]])).tolist() == [[2, 4, 1, 4, 3]]
    assert competition_ranks(torch.tensor([[0.0, 0.0, 0.0]])).tolist() == [[1, 1, 1]]


def test_zipf_targets_on_votes_with_a_tie():
    pi = zipf_targets(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), torch.tensor([1]))  # ranks 1, 2, 2, 4
    assert pi.tolist()[0] == pytest.approx([1 / 1.75, 0.0, 0.5 / 1.75, 0.25 / 1.75], rel=1e-6)


def test_zipf_dense_votes_by_hand():
    classifier = torch.nn.Linear(2, 3)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        classifier.bias.zero_()
    # positions (1,0)→0, (0,1)→1, (−1,−1)→2, (2,1)→0
    f = torch.tensor([[[[1.0, 0.0], [-1.0, 2.0]], [[0.0, 1.0], [-1.0, 1.0]]]])
    assert dense_votes(f, classifier, 3, None).tolist() == [[2.0, 1.0, 1.0]]
    assert dense_votes(f, classifier, 3, "bilinear").sum().item() == 16  # 2×2 → 4×4 positions
    constant = torch.tensor([[[[0.0]], [[1.0]]]])
    assert dense_votes(constant, classifier, 3, "bilinear").tolist() == [[0.0, 4.0, 0.0]]


def _zipf_by_hand(scores, logits, targets, mask=None):
    total, count = 0.0, 0
    for s, z, y, keep in zip(scores, logits.tolist(), targets.tolist(), mask or [True] * len(scores)):
        ranks = [1 + sum(o > v for o in s) for v in s]
        w = [0.0 if k == y else 1 / r for k, r in enumerate(ranks)]
        pi = [v / sum(w) for v in w]
        others = [k for k in range(len(z)) if k != y]
        lse = math.log(sum(math.exp(z[k]) for k in others))
        if keep:
            total += sum(pi[k] * (math.log(pi[k]) - (z[k] - lse)) for k in others)
            count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("dense", [True, False])
def test_zipf_loss_by_hand(tiny_resnet, dense):
    model = tiny_resnet(num_classes=K)
    method = create_method("zipf_ls", model, num_classes=K, dense=dense)
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        z, feats = model(x)
        if dense:
            up = F.interpolate(feats[-1], scale_factor=2, mode="bilinear", align_corners=False)
            per_position = up.flatten(2).transpose(1, 2) @ model.fc.weight.T + model.fc.bias
            winners = per_position.argmax(2).tolist()
            scores = [[row.count(k) for k in range(K)] for row in winners]
        else:
            scores = z.tolist()
    assert out.losses["ce"].item() == pytest.approx(_ce(z, y), rel=1e-5)
    assert out.losses["zipf"].item() == pytest.approx(0.1 * _zipf_by_hand(scores, z, y), rel=1e-4, abs=1e-5)
    assert method.extra_parameters() == 0


def test_zipf_loss_mask_averages_over_correct_samples(tiny_resnet):
    model = tiny_resnet(num_classes=K)
    method = create_method("zipf_ls", model, num_classes=K, dense=False, loss_mask=True)
    x, _ = _batch()
    with torch.no_grad():
        z = model(x)[0]
    y = z.argmax(1)
    y[2:] = (y[2:] + 1) % K  # samples 0, 1 correct; 2, 3 wrong
    out = method(x, y)
    expected = _zipf_by_hand(z.tolist(), z, y, mask=[True, True, False, False])
    assert out.losses["zipf"].item() == pytest.approx(0.1 * expected, rel=1e-4, abs=1e-5)
