"""Test-only methods that inject faults (a NaN loss, a SIGTERM) at a chosen training step."""
import signal

import torch

from selfkd.losses import cross_entropy
from selfkd.methods import Method, MethodOutput, list_methods, register_method
from selfkd.methods.ce import CrossEntropy
from selfkd.methods.lightskd import LightSKD

if "test_nan" not in list_methods():
    @register_method("test_nan")
    class NanFromStep(Method):
        """CE whose loss turns NaN from training step ``from_step`` on (1-based; the count is a buffer, so
        it carries over a resume)."""

        def __init__(self, model, num_classes, from_step: int = 3):
            super().__init__(model, num_classes)
            self.from_step = from_step
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def compute_loss(self, images, targets, index=None):
            logits, _ = self.backbone(images)
            self.calls += 1
            ce = cross_entropy(logits, targets)
            poison = torch.where(self.calls >= self.from_step, torch.tensor(float("nan")), torch.tensor(0.0))
            return MethodOutput(logits, ce + poison, {"ce": ce, "poison": poison})


class SigtermAtStep:
    """Mixin: the method sends SIGTERM to its own process during training step ``at_step`` (1-based; 0 = never)."""

    def __init__(self, model, num_classes, at_step: int = 0):
        super().__init__(model, num_classes)
        self.at_step, self.calls = at_step, 0

    def compute_loss(self, images, targets, index=None):
        self.calls += 1
        if self.calls == self.at_step:
            signal.raise_signal(signal.SIGTERM)
        return super().compute_loss(images, targets, index)


if "test_sigterm" not in list_methods():
    register_method("test_sigterm")(type("CrossEntropySigterm", (SigtermAtStep, CrossEntropy), {}))
if "test_lightskd_stop" not in list_methods():
    register_method("test_lightskd_stop")(type("LightSKDSigterm", (SigtermAtStep, LightSKD), {}))
