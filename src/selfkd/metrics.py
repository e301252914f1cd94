"""Evaluation metrics. Each metric owns its whole life: how it accumulates batches (sums on the device,
no host sync per batch), how it is reduced across processes, what numbers it reports, and how they are
shown (its :class:`Column` s, read by the epoch line and the report table). Adding a metric is one class
here and its name in its task's list (:data:`selfkd.tasks.TASKS`).

Classification: top-1/top-5 accuracy, NLL, expected calibration error (15 bins), AURC.
Segmentation: mIoU, pixel accuracy and per-class IoU from one confusion matrix over the whole evaluation set,
and pixel ECE; pixels labelled with the task's ``ignore_index`` are left out of everything.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .comm import all_gather_cat, all_reduce_sum
from .errors import DatasetError
from .tasks import TASKS

ECE_BINS = 15


@dataclass(frozen=True)
class Column:
    """One reported number: its key in the evaluation result (and in summary.json's ``final``), its header in
    the report table, its digits, and its label in the per-epoch console line (None: not shown there)."""

    key: str
    header: str
    digits: int
    line: str | None = None

    def format(self, value: float) -> str:
        """``value`` with the column's digits, followed by "%" when the column is in per cent (header "... (%)")."""
        return f"{value:.{self.digits}f}" + ("%" if "(%)" in self.header else "")


class Metric:
    """Accumulates evaluation batches; :meth:`sync` sums its state over processes before :meth:`result`.
    ``ignore_index`` marks targets to leave out (the unlabelled pixels of segmentation masks; None: none)."""

    columns: tuple[Column, ...] = ()

    def __init__(self, num_classes: int, device: torch.device, ignore_index: int | None = None):
        self.num_classes, self.device, self.ignore_index = num_classes, device, ignore_index

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Combine the state of every process (a no-op in one process)."""

    def result(self) -> dict:
        raise NotImplementedError

    def files(self) -> dict[str, object]:
        """JSON documents the run folder keeps from the last evaluation (file stem -> content)."""
        return {}


class Summed(Metric):
    """A metric whose state is one float64 tensor of sums (all-reduced across processes) of ``state_shape()``."""

    def __init__(self, num_classes: int, device: torch.device, ignore_index: int | None = None):
        super().__init__(num_classes, device, ignore_index)
        self.sums = torch.zeros(self.state_shape(), device=device, dtype=torch.float64)

    def state_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def sync(self) -> None:
        all_reduce_sum(self.sums)


class Accuracy(Summed):
    columns = (Column("top1", "Top-1 (%)", 2, "test"), Column("top5", "Top-5 (%)", 2))

    def state_shape(self):
        return (3,)  # n, top-1 hits, top-5 hits

    @torch.no_grad()
    def update(self, logits, targets):
        hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
        self.sums += torch.stack([torch.full((), len(targets), device=self.device, dtype=torch.float64),
                                  hit[:, 0].sum().double(), hit.any(1).sum().double()])

    def result(self):
        n, top1, top5 = self.sums.tolist()
        return {"top1": 100.0 * top1 / n if n else float("nan"), "top5": 100.0 * top5 / n if n else float("nan"),
                "n": int(n)}


class NLL(Summed):
    columns = (Column("nll", "NLL", 3, "nll"),)

    def state_shape(self):
        return (2,)  # n, summed negative log-likelihood

    @torch.no_grad()
    def update(self, logits, targets):
        nll = F.cross_entropy(logits.float(), targets, reduction="sum").double()
        self.sums += torch.stack([torch.full((), len(targets), device=self.device, dtype=torch.float64), nll])

    def result(self):
        n, nll = self.sums.tolist()
        return {"nll": nll / n if n else float("nan")}


def ece_bin_stats(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS,
                  ignore_index: int | None = None) -> torch.Tensor:
    """(3, bins): per confidence bin ``(lo, hi]`` the count, the summed confidence, the number correct, over the
    predictions of ``probs`` (classes on dim 1: ``(N, K)``, or ``(B, K, H, W)`` for pixels) whose target is not
    ``ignore_index``. No boolean indexing, so no host sync."""
    conf, pred = probs.max(dim=1)
    labelled = (torch.ones_like(conf, dtype=torch.float64) if ignore_index is None
                else (targets != ignore_index).double())
    idx = torch.clamp(torch.ceil(conf * bins).long() - 1, 0, bins - 1).flatten()
    stats = torch.zeros(3, bins, device=probs.device, dtype=torch.float64)
    stats[0].index_add_(0, idx, labelled.flatten())
    stats[1].index_add_(0, idx, (conf.double() * labelled).flatten())
    stats[2].index_add_(0, idx, ((pred == targets).double() * labelled).flatten())
    return stats


def ece_from_bins(stats: torch.Tensor) -> float:
    """ECE = Σ_b (n_b/N) · |acc_b − conf_b| (Guo et al. 2017)."""
    count, conf, correct = stats
    total = count.sum()
    if total == 0:
        return float("nan")
    return float((conf - correct).abs().sum() / total)


class Calibration(Summed):
    """Expected calibration error over 15 equal-width confidence bins, and the bins for reliability diagrams."""

    columns = (Column("ece", "ECE (%)", 2, "ece"),)

    def state_shape(self):
        return (3, ECE_BINS)  # per bin: count, summed confidence, number correct

    @torch.no_grad()
    def update(self, logits, targets):
        self.sums += ece_bin_stats(F.softmax(logits.float(), dim=1), targets)

    def result(self):
        return {"ece": 100.0 * ece_from_bins(self.sums)}

    def files(self):
        count, conf, correct = self.sums.tolist()
        return {"reliability": {"count": count, "confidence": [c / n if n else 0.0 for c, n in zip(conf, count)],
                                "accuracy": [a / n if n else 0.0 for a, n in zip(correct, count)]}}


class PixelCalibration(Calibration):
    """ECE over the labelled pixels of a segmentation evaluation set (each pixel one prediction)."""

    @torch.no_grad()
    def update(self, logits, targets):
        self.sums += ece_bin_stats(F.softmax(logits.float(), dim=1), targets, ignore_index=self.ignore_index)


def aurc(confidence: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the risk–coverage curve (Geifman et al. 2019): mean over coverages k/N of the
    error rate among the k most confident predictions."""
    order = torch.argsort(confidence, descending=True, stable=True)
    errors = 1.0 - correct[order].double()
    risk = torch.cumsum(errors, 0) / torch.arange(1, len(errors) + 1, device=errors.device, dtype=torch.float64)
    return float(risk.mean()) if len(risk) else float("nan")


class AURC(Metric):
    """Needs every prediction's confidence, so it gathers them from all processes instead of summing."""

    columns = (Column("aurc", "AURC (×10³)", 1),)

    def __init__(self, num_classes: int, device: torch.device, ignore_index: int | None = None):
        super().__init__(num_classes, device, ignore_index)
        self.confidence: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, logits, targets):
        conf, pred = F.softmax(logits.float(), dim=1).max(1)
        self.confidence.append(conf)
        self.correct.append((pred == targets).float())

    def sync(self):  # every process joins the gather, one without test images too (fewer images than processes)
        empty = [torch.zeros(0, device=self.device)]
        self.confidence = [all_gather_cat(torch.cat(self.confidence or empty))]
        self.correct = [all_gather_cat(torch.cat(self.correct or empty))]

    def result(self):
        if not self.confidence:
            return {"aurc": float("nan")}
        return {"aurc": 1000.0 * aurc(torch.cat(self.confidence), torch.cat(self.correct))}


def confusion_matrix(pred: torch.Tensor, targets: torch.Tensor, num_classes: int,
                     ignore_index: int | None) -> torch.Tensor:
    """``(K, K)`` float64 pixel counts, rows = true class, columns = predicted class; ignored pixels are left out
    (they go to an extra cell that is dropped, so no boolean indexing and no host sync)."""
    k = num_classes
    cell = targets.long() * k + pred.long()
    if ignore_index is not None:
        cell = torch.where(targets != ignore_index, cell, k * k)
    cell = cell.flatten()
    counts = torch.zeros(k * k + 1, device=pred.device, dtype=torch.float64)
    counts.index_add_(0, cell, torch.ones_like(cell, dtype=torch.float64))
    return counts[:-1].view(k, k)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """``IoU_k = C_kk / (Σ_j C_kj + Σ_j C_jk − C_kk)``; NaN for a class absent from both truth and prediction."""
    diag = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - diag
    return torch.where(union > 0, diag / union.clamp(min=1), torch.full_like(diag, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes present in truth or prediction (NaN-skipping mean)."""
    return float(torch.nanmean(iou_per_class(confusion)))


def pixel_accuracy(confusion: torch.Tensor) -> float:
    total = confusion.sum()
    return float(confusion.diagonal().sum() / total) if total > 0 else float("nan")


class Segmentation(Summed):
    """One confusion matrix over the whole evaluation set (ignored pixels excluded): mIoU, pixel accuracy and the
    per-class IoU (None for a class absent from both truth and prediction), in %; ``n`` = labelled pixels."""

    columns = (Column("miou", "mIoU (%)", 2, "mIoU"), Column("pixel_acc", "Pixel acc. (%)", 2, "pixel acc"))

    def state_shape(self):
        return (self.num_classes, self.num_classes)

    @torch.no_grad()
    def update(self, logits, targets):
        self.sums += confusion_matrix(logits.argmax(dim=1), targets, self.num_classes, self.ignore_index)

    def result(self):
        iou = iou_per_class(self.sums).tolist()
        return {"miou": 100.0 * mean_iou(self.sums), "pixel_acc": 100.0 * pixel_accuracy(self.sums),
                "iou_per_class": [None if v != v else 100.0 * v for v in iou], "n": int(self.sums.sum())}


def task_metrics(task: str) -> list[type[Metric]]:
    """The metric classes a task declares (:attr:`selfkd.tasks.Task.metric_names`), in its order."""
    return [globals()[name] for name in TASKS[task].metric_names]


def columns(task: str | None = None) -> list[Column]:
    """The columns of one task's metrics, or of every task's (report tables may mix tasks)."""
    out: list[Column] = []
    for name in [task] if task else TASKS:
        for metric in task_metrics(name):
            out += [c for c in metric.columns if c not in out]
    return out


def column(key: str) -> Column:
    """The column of the metric named ``key`` (e.g. the headline ``top1`` or ``miou``), whatever its task."""
    return next(c for c in columns() if c.key == key)


class Evaluation:
    """The metrics of one task over one evaluation pass (targets equal to the task's ``ignore_index`` left out)."""

    def __init__(self, task: str, num_classes: int, device: torch.device):
        self.metrics = [cls(num_classes, device, TASKS[task].ignore_index) for cls in task_metrics(task)]
        self.unit = "pixel" if TASKS[task].dense else "image"  # what the headline metric counts

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        for m in self.metrics:
            m.update(logits, targets)

    def result(self) -> dict:
        """Every metric's numbers, after combining the state of all processes. An evaluation set without one
        labelled target is refused: every metric would be NaN."""
        out: dict = {}
        for m in self.metrics:
            m.sync()
            out.update(m.result())
        if out.get("n") == 0:
            error = DatasetError(f"The evaluation set holds no labelled {self.unit} (every target is marked "
                                 f"unlabelled: {self.metrics[0].ignore_index}), so every metric would be NaN. Label "
                                 "some of its test images, or evaluate on another split.")
            error.agreed = True  # every process combined the same counts
            raise error
        return out

    def files(self) -> dict[str, object]:
        return {k: v for m in self.metrics for k, v in m.files().items()}
