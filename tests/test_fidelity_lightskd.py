"""LightSKD (``drg``, ``lightskd``) against its official code (xucong-parsifal/LightSKD), from the fixtures that
``tests/fidelity/record_lightskd.py`` records: same drawn weights and batches, every loss term, the total and every
parameter's gradient (norm and four entries), step by step.

``dsr`` alone has no fixture: the official DSR-alone run compares the sorted logits with a random tensor (its cache
is only updated when DRG is on), which is no method; DSR's term is compared inside ``lightskd``'s steps.
"""
import pytest

from fidelity import harness

# float64: both sides run the same operations on the same float64 numbers; what can differ is the order of the
# additions inside a kernel (another oneDNN/BLAS algorithm), which moves a result by a few ulps of the largest partial
# sum: about 1e-14 relative over these reductions of up to 1e4 terms, and 1e-12 after 5 steps amplify it. 1e-10 is
# 100 times that; changing the maths by one term moves a loss or a gradient by far more than 1e-6.
FLOAT64 = 1e-10
# float32 (weights fixed, harness.tolerances): loss terms within 10 times the official float32 run's own distance
# from its float64 values (the two sides round in different orders, each by about that much); each tensor's gradient
# norm within 2e-3 of the whole gradient's norm (measured: up to 3e-4 between the official float32 and float64 runs
# and between oneDNN's AVX2 and AVX-512 kernels).
FLOAT32_FACTOR, FLOAT32_GRADIENTS = 10.0, 2e-3

CASES = harness.fixture_names("lightskd-*") + harness.fixture_names("drg-*")


def test_every_case_is_recorded_in_both_precisions():
    assert CASES == ["lightskd-resnet18-float32", "lightskd-resnet18-float64", "drg-resnet18-float32",
                     "drg-resnet18-float64"]


@pytest.mark.parametrize("name", CASES)
def test_matches_the_official_code(name):
    fixture = harness.load(name)
    harness.check(fixture, harness.selfkd_steps(fixture), FLOAT64, FLOAT32_FACTOR, FLOAT32_GRADIENTS)


def test_the_trajectory_crosses_an_epoch_with_dsr_on_and_off():
    """What the lightskd fixture covers: DSR's term absent on each epoch's first step, present on the others."""
    fixture = harness.load("lightskd-resnet18-float64")
    dsr = [step["losses"]["dsr"] for step in fixture["steps"]]
    assert [b["epoch"] for b in fixture["batches"]] == [0, 0, 0, 1, 1]
    assert dsr[0] == dsr[3] == 0 and min(dsr[1:3] + dsr[4:]) > 1e-3
    assert fixture["optimizer"]["lr"] > 0
