"""The training step: gradient accumulation, clipping by value, and its statistics (ignored targets left out)."""
import pytest
import torch
from torch import nn

from selfkd.engine.step import StepStats, TrainStep
from selfkd.losses import cross_entropy
from selfkd.methods.base import Method, MethodOutput
from selfkd.tasks import IGNORE_LABEL


class LinearNet(nn.Module):
    """A backbone without batch statistics, so a batch split in two gives the same gradients as the whole."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)
        self.num_classes = 3

    def forward(self, x):
        return self.fc(x), []


class CE(Method):
    def compute_loss(self, images, targets, index=None):
        logits, _ = self.backbone(images)
        loss = cross_entropy(logits, targets)
        return MethodOutput(logits, loss, {"ce": loss})


def make_step(accumulate=1, **kwargs):
    method = CE(LinearNet(), 3)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9)
    return method, TrainStep(method, optimizer, torch.device("cpu"), "off", accumulate=accumulate, **kwargs)


def test_accumulated_halves_update_like_the_whole_batch():
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    whole, step = make_step()
    step(x, y)
    step(x, y)
    halves, acc = make_step(accumulate=2)
    for _ in range(2):
        acc(x[:4], y[:4])
        assert acc.pending == 1  # no optimizer step yet: the weights are those before the window
        acc(x[4:], y[4:])
        assert acc.pending == 0
    for a, b in zip(whole.parameters(), halves.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert acc.stats.steps == 4 and acc.stats.seen == 16  # statistics count every batch


def test_the_last_batch_of_an_epoch_steps_the_optimizer():
    method, step = make_step(accumulate=4)
    before = method.backbone.fc.weight.detach().clone()
    step(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), last=True)
    assert step.pending == 0 and not torch.equal(before, method.backbone.fc.weight)


def test_clipping_by_value_bounds_every_gradient_entry(monkeypatch):
    method, step = make_step(grad_clip=1e-3, clip_mode="value")
    seen, real = [], torch.optim.SGD.step

    def record(self, *args, **kwargs):  # the largest gradient entry the optimizer is given
        seen.append(max(p.grad.abs().max().item() for g in self.param_groups for p in g["params"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    step(10 * torch.randn(8, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    assert seen == [pytest.approx(1e-3)]


def test_training_accuracy_leaves_ignored_targets_out():
    stats = StepStats(torch.device("cpu"), ignore_index=IGNORE_LABEL)
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2 classes, 1, 2 pixels): predicts 0 then 1
    loss = torch.tensor(1.0)
    stats.add(logits, torch.tensor([[[0, 255]]]), loss, {"ce": loss})
    stats.add(logits, torch.tensor([[[1, 1]]]), loss, {"ce": loss})
    assert stats.summary("pixel_acc")["train/pixel_acc"] == pytest.approx(100 * 2 / 3)  # 1 of 1, then 1 of 2
