"""Evaluation metrics against hand-computed values."""
import pytest
import torch

from selfkd.metrics import EvalStats, aurc, ece_bin_stats, ece_from_bins


def test_ece_two_bins_by_hand():
    # Confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct): bins (0.8667,0.9333] and (0.5333,0.6].
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    targets = torch.tensor([0, 1, 1])
    stats = ece_bin_stats(probs, targets)
    assert stats[0].sum() == 3
    expected = (2 / 3) * abs(0.9 - 0.5) + (1 / 3) * abs(0.6 - 1.0)
    assert ece_from_bins(stats) == pytest.approx(expected)


def test_aurc_by_hand():
    conf = torch.tensor([0.9, 0.8, 0.7, 0.6])
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # risks at coverage 1..4: 0/1, 1/2, 1/3, 2/4
    assert aurc(conf, correct) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)


def test_eval_stats_accumulates_batches():
    stats = EvalStats(torch.device("cpu"))
    logits = torch.tensor([[3.0, 1.0, 0.0, 0, 0, 0], [0.0, 1.0, 3.0, 0, 0, 0]])
    stats.update(logits[:1], torch.tensor([0]))
    stats.update(logits[1:], torch.tensor([1]))
    r = stats.result()
    assert r["n"] == 2
    assert r["top1"] == pytest.approx(50.0)
    assert r["top5"] == pytest.approx(100.0)
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).item()
    assert r["nll"] == pytest.approx(nll, rel=1e-6)
