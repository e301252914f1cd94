"""Segmentation metrics against an independent NumPy reference (ignored pixels, absent classes, several batches)."""
import numpy as np
import pytest
import torch

from selfkd.metrics import Evaluation, columns, confusion_matrix

K = 5


def reference(logits: np.ndarray, targets: np.ndarray) -> dict:
    """mIoU / pixel accuracy / per-class IoU / 15-bin ECE over pixels whose label is not 255, class by class."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    valid = targets != 255
    ious = []
    for k in range(K):
        tp = np.sum((pred == k) & (targets == k) & valid)
        fp = np.sum((pred == k) & (targets != k) & valid)
        fn = np.sum((pred != k) & (targets == k) & valid)
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else None)
    present = [v for v in ious if v is not None]
    correct = (pred == targets)[valid]
    conf = conf[valid]
    ece = 0.0
    for b in range(15):
        in_bin = (conf > b / 15) & (conf <= (b + 1) / 15)
        if in_bin.any():
            ece += in_bin.sum() / valid.sum() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return {"miou": 100 * sum(present) / len(present), "pixel_acc": 100 * correct.mean(), "ece": 100 * ece,
            "iou_per_class": [None if v is None else 100 * v for v in ious], "n": int(valid.sum())}


def make_batches():
    """Two batches: class 4 never labelled nor predicted; class 3 predicted only where the label is 255."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):
        targets = rng.integers(0, 3, (2, 6, 7))
        targets[rng.random(targets.shape) < 0.2] = 255
        logits = rng.normal(size=(2, K, 6, 7)) * 2
        logits[:, 3] = -50.0
        logits[:, 4] = -50.0
        ignored = targets == 255
        logits[:, 3][ignored & (rng.random(targets.shape) < 0.5)] = 50.0
        batches.append((logits, targets))
    return batches


def test_metrics_match_numpy_reference_over_several_batches():
    batches = make_batches()
    stats = Evaluation("segmentation", K, torch.device("cpu"))
    for logits, targets in batches:
        stats.update(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets))
    got = stats.result()
    want = reference(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    assert want["iou_per_class"][3] is None and want["iou_per_class"][4] is None  # the data has the edge cases
    assert got["iou_per_class"][3] is None and got["iou_per_class"][4] is None
    for key in ("miou", "pixel_acc", "ece"):
        assert got[key] == pytest.approx(want[key], rel=1e-5)
    assert got["iou_per_class"][:3] == pytest.approx(want["iou_per_class"][:3], rel=1e-9)
    assert got["n"] == want["n"]


def test_state_sums_across_processes():
    """Each rank's tensors summed (what sync's all-reduce does) give the statistics of the whole set."""
    batches = make_batches()
    ranks = [Evaluation("segmentation", K, torch.device("cpu")) for _ in batches]
    whole = Evaluation("segmentation", K, torch.device("cpu"))
    for stats, (logits, targets) in zip(ranks, batches):
        stats.update(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets))
        whole.update(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets))
    for mine, other in zip(ranks[0].metrics, ranks[1].metrics):
        mine.sums += other.sums
    assert ranks[0].result() == whole.result()
    assert set(whole.result()) - {"n", "iou_per_class"} == {c.key for c in columns("segmentation")}


def test_confusion_matrix_rows_are_truth_and_columns_predictions():
    pred = torch.tensor([[0, 1, 1, 2]])
    targets = torch.tensor([[0, 0, 255, 2]])
    assert confusion_matrix(pred, targets, 3, 255).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
