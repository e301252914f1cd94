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
# float32 (weights fixed; harness.tolerances): loss terms, total and each tensor's gradient norm against the whole
# gradient's within 20 times the official float32 run's own distance from its float64 run of the same steps. Each side
# rounds about that much, in its own order and with its own kernels; measured over all fixtures the ratio is at most
# 4.5 (oneDNN's AVX2 kernels against the AVX-512 ones that recorded them), so 20 leaves room for other machines.
FLOAT32_FACTOR = 20.0

CASES = harness.fixture_names("lightskd-*") + harness.fixture_names("drg-*")


def test_every_case_is_recorded_in_both_precisions():
    assert CASES == ["lightskd-resnet18-float32", "lightskd-resnet18-float64", "drg-resnet18-float32",
                     "drg-resnet18-float64"]


@pytest.mark.parametrize("name", CASES)
def test_matches_the_official_code(name):
    fixture = harness.load(name)
    harness.check(fixture, FLOAT64, FLOAT32_FACTOR)


def test_the_trajectory_crosses_an_epoch_with_dsr_on_and_off():
    """What the lightskd fixture covers: DSR's term absent on each epoch's first step, present on the others."""
    fixture = harness.load("lightskd-resnet18-float64")
    dsr = [step["losses"]["dsr"] for step in fixture["steps"]]
    assert [b["epoch"] for b in fixture["batches"]] == [0, 0, 0, 1, 1]
    assert dsr[0] == dsr[3] == 0 and min(dsr[1:3] + dsr[4:]) > 1e-3
    assert fixture["optimizer"]["lr"] > 0
