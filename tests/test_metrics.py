"""Evaluation metrics against hand-computed values."""
import pytest
import torch

from selfkd.metrics import Evaluation, aurc, columns, ece_bin_stats, ece_from_bins


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


def test_classification_evaluation_accumulates_batches():
    stats = Evaluation("classification", 6, torch.device("cpu"))
    logits = torch.tensor([[3.0, 1.0, 0.0, 0, 0, 0], [0.0, 1.0, 3.0, 0, 0, 0]])
    stats.update(logits[:1], torch.tensor([0]))
    stats.update(logits[1:], torch.tensor([1]))
    r = stats.result()
    assert r["n"] == 2
    assert r["top1"] == pytest.approx(50.0)
    assert r["top5"] == pytest.approx(100.0)
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).item()
    assert r["nll"] == pytest.approx(nll, rel=1e-6)
    probs = torch.softmax(logits, 1)
    assert r["ece"] == pytest.approx(100 * ece_from_bins(ece_bin_stats(probs, torch.tensor([0, 1]))))
    conf, pred = probs.max(1)
    assert r["aurc"] == pytest.approx(1000 * aurc(conf, (pred == torch.tensor([0, 1])).float()))
    (reliability,) = stats.files().values()
    assert sum(reliability["count"]) == 2


def test_every_result_key_a_metric_reports_has_a_column():
    """The report and the epoch line find every reported number through the metrics' columns."""
    stats = Evaluation("classification", 3, torch.device("cpu"))
    stats.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert set(stats.result()) - {"n"} == {c.key for c in columns("classification")}
