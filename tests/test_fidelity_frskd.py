"""FRSKD against its official code (MingiJi/FRSKD), from the fixtures that ``tests/fidelity/record_frskd.py``
records: same drawn weights and batches, every loss term, the total and every parameter's gradient (norm and four
entries), step by step.

Classification: the default (BiFPNc self-teacher, attention transfer), ``teacher=bifpn``, ``feature_loss=fitnet``
and ``sla=true``, each over 2 steps. Not compared: ``feature_loss=overhaul`` (the official margin is frozen at
initialisation, a bug not reproduced) and mixup/CutMix (their draws come from NumPy in the official code and from
torch here, so the batches cannot be the same).
"""
import pytest

from fidelity import harness

# Tolerances as in test_fidelity_lightskd.py. float64: same operations on the same float64 numbers, only the
# order of additions inside a kernel may differ: ~1e-13 relative here; 1e-10 is far below what one changed term
# moves. float32 (weights fixed): loss terms within 10 times the official float32 run's own distance from its
# float64 values; each tensor's gradient norm within 2e-3 of the whole gradient's norm (measured: up to 3e-4
# between the official float32 and float64 runs and between oneDNN's AVX2 and AVX-512 kernels).
FLOAT64, FLOAT32_FACTOR, FLOAT32_GRADIENTS = 1e-10, 10.0, 2e-3

CLASSIFICATION = harness.fixture_names("frskd-*resnet18-*")


def test_every_classification_case_is_recorded_in_both_precisions():
    cases = ["frskd-resnet18", "frskd-bifpn-resnet18", "frskd-fitnet-resnet18", "frskd-sla-resnet18"]
    assert sorted(CLASSIFICATION) == sorted(f"{c}-{d}" for c in cases for d in ("float32", "float64"))


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_matches_the_official_code(name):
    fixture = harness.load(name)
    harness.check(fixture, harness.selfkd_steps(fixture), FLOAT64, FLOAT32_FACTOR, FLOAT32_GRADIENTS)
