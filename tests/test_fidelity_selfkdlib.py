"""Self-KD-Lib's methods against its own code (winycg/Self-KD-Lib), from the fixtures that
``tests/fidelity/record_selfkdlib.py`` records: same drawn weights and batches, the official loss variables (each
the sum of some of selfkd's terms), the total and every official parameter's gradient (norm and four entries),
step by step. Covered: ``ce``, ``ls``, ``tfkd_reg``/``ddgsd``/``dks``/``bake``/``mixskd`` with
``compat=selfkdlib``, ``byot`` with ``branch=stage_copy``, ``sad``, ``cskd``, ``pskd``, and the values of the
default ``mixskd``'s terms.
"""
import pytest

from fidelity import harness

# float64: both sides run the same operations on the same float64 numbers; what can differ is the order of the
# additions inside a kernel (another oneDNN/BLAS algorithm, a sum split differently), which moves a result by a few
# ulps of the largest partial sum: about 1e-14 relative over these reductions, 1e-12 after a few steps amplify it.
# 1e-10 is 100 times that; changing the maths by one term moves a loss or a gradient by far more than 1e-6.
FLOAT64 = 1e-10
# float32 (weights fixed; harness.tolerances): loss terms, total and each tensor's gradient norm against the whole
# gradient's within 20 times the official float32 run's own distance from its float64 run of the same steps. Each side
# rounds about that much, in its own order and with its own kernels (as test_fidelity_lightskd.py).
FLOAT32_FACTOR = 20.0

CASES = ["ce", "ls", "tfkd_reg", "sad", "dks", "byot", "ddgsd", "cskd", "bake", "pskd", "mixskd", "mixskd_default"]
NAMES = harness.fixture_names("selfkdlib-*")


def test_every_case_is_recorded_in_both_precisions():
    assert NAMES == sorted(f"selfkdlib-{case}-{dtype}" for case in CASES for dtype in ("float32", "float64"))


@pytest.mark.parametrize("name", NAMES)
def test_matches_the_official_code(name):
    fixture = harness.load(name)
    harness.check(fixture, FLOAT64, FLOAT32_FACTOR)


def test_the_stateful_cases_are_trajectories():
    """PS-KD's table is read back across an epoch boundary (its soft targets change the loss there); BAKE and
    PS-KD take SGD steps between the recorded steps."""
    pskd = harness.load("selfkdlib-pskd-float64")
    assert [b["epoch"] for b in pskd["batches"]] == [0, 0, 1, 1]
    assert len(harness.load("selfkdlib-bake-float64")["steps"]) == 2
    assert pskd["optimizer"]["lr"] > 0 and pskd["epochs"] == 4


def test_the_default_mixskd_compares_term_values_only():
    """No official script trains the default total (the CIFAR script leaves the mixed CE out, neither trains the
    discriminators): its fixture holds the official values of each of its terms and no gradients."""
    fixture = harness.load("selfkdlib-mixskd_default-float64")
    step = fixture["steps"][0]
    assert step["grads"] == {} and set(step["losses"]) == {"cls", "mixcls", "div", "fea", "gan", "gan_swapped"}
    assert step["loss"] == pytest.approx(sum(step["losses"].values()), rel=1e-15)
