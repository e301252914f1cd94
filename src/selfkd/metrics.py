"""Evaluation metrics: top-1/top-5 accuracy, NLL, expected calibration error (15 bins), AURC.

Statistics are accumulated as sums on the device (no host sync per batch) and can be summed
across processes before :meth:`EvalStats.result` turns them into numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ECE_BINS = 15


def ece_bin_stats(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """(3, bins): per confidence bin ``(lo, hi]`` the count, the summed confidence, the number correct."""
    conf, pred = probs.max(dim=1)
    correct = (pred == targets).float()
    idx = torch.clamp(torch.ceil(conf * bins).long() - 1, 0, bins - 1)
    stats = torch.zeros(3, bins, device=probs.device, dtype=torch.float64)
    stats[0].index_add_(0, idx, torch.ones_like(conf, dtype=torch.float64))
    stats[1].index_add_(0, idx, conf.double())
    stats[2].index_add_(0, idx, correct.double())
    return stats


def ece_from_bins(stats: torch.Tensor) -> float:
    """ECE = Σ_b (n_b/N) · |acc_b − conf_b| (Guo et al. 2017)."""
    count, conf, correct = stats
    total = count.sum()
    if total == 0:
        return float("nan")
    return float((conf - correct).abs().sum() / total)


def aurc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the risk–coverage curve (Geifman et al. 2019): mean over coverages k/N of the
    error rate among the k most confident predictions."""
    order = torch.argsort(confidence, descending=True, stable=True)
    errors = 1.0 - correct[order].double()
    risk = torch.cumsum(errors, 0) / torch.arange(1, len(errors) + 1, device=errors.device, dtype=torch.float64)
    return float(risk.mean()) if len(risk) else float("nan")


class EvalStats:
    """Running sums over evaluation batches."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # n, top1, top5, nll
        self.bins = torch.zeros(3, ECE_BINS, device=device, dtype=torch.float64)
        self.confidence: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.float()
        probs = F.softmax(logits, dim=1)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit = topk == targets[:, None]
        nll = F.cross_entropy(logits, targets, reduction="sum")
        self.sums += torch.stack([torch.tensor(float(len(targets)), device=logits.device, dtype=torch.float64),
                                  hit[:, 0].sum().double(), hit.any(1).sum().double(), nll.double()])
        self.bins += ece_bin_stats(probs, targets)
        conf, pred = probs.max(1)
        self.confidence.append(conf)
        self.correct.append((pred == targets).float())

    def result(self) -> dict:
        n, top1, top5, nll = self.sums.tolist()
        conf = torch.cat(self.confidence) if self.confidence else torch.zeros(0)
        correct = torch.cat(self.correct) if self.correct else torch.zeros(0)
        return {
            "top1": 100.0 * top1 / n if n else float("nan"),
            "top5": 100.0 * top5 / n if n else float("nan"),
            "nll": nll / n if n else float("nan"),
            "ece": 100.0 * ece_from_bins(self.bins),
            "aurc": 1000.0 * aurc(conf, correct),
            "n": int(n),
        }

    def reliability(self) -> dict:
        """Per-bin counts, mean confidence and accuracy, for reliability diagrams."""
        count, conf, correct = self.bins.tolist()
        return {"count": count, "confidence": [c / n if n else 0.0 for c, n in zip(conf, count)],
                "accuracy": [a / n if n else 0.0 for a, n in zip(correct, count)]}
