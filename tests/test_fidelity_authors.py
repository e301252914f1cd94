"""selfkd's methods against their authors' code, from the fixtures that ``tests/fidelity/record_<reference>.py``
records: same drawn weights and batches, each loss term, the total and every official parameter's gradient (norm
and four entries), step by step (SGD steps in between in float64).

CS-KD (alinlab/cs-kd), PS-KD (lgcnsai/PS-KD-Pytorch), TF-KD reg and self (yuanli2333/Teacher-free-Knowledge-
Distillation), DLB (Meta-knowledge-Lab/DLB), BAKE (yxgeee/BAKE), ONE (Lan1991Xu/ONE_NeurIPS2018), SLA-SD
(hankook/SLA), Zipf's LS (megvii-research/zipfls), USKD (yzd-v/cls_KD). MixSKD's authors' code is Self-KD-Lib's
(``test_fidelity_selfkdlib.py``); BYOT and DDGSD have no authors' code.
"""
import pytest

from fidelity import harness

# float64: both sides run the same operations on the same float64 numbers; what can differ is the order of the
# additions inside a kernel (another oneDNN/BLAS algorithm, a sum split differently), which moves a result by a few
# ulps of the largest partial sum: about 1e-14 relative over these reductions, 1e-12 after a few steps amplify it.
# 1e-10 is 100 times that; changing the maths by one term moves a loss or a gradient by far more than 1e-6.
FLOAT64 = 1e-10
# float32 (weights fixed, harness.tolerances): loss terms within 10 times the official float32 run's own distance
# from its float64 values (the two sides round in different orders, each by about that much); each tensor's gradient
# norm within 2e-3 of the whole gradient's norm (as test_fidelity_lightskd.py: rounding moves a gradient by about
# epsilon times the sizes of its contributions, whole percents of a gradient that nearly cancels).
FLOAT32_FACTOR, FLOAT32_GRADIENTS = 10.0, 2e-3
# ONE: its KLLoss adds 1e-7 to every teacher probability (a guard against log 0 that selfkd leaves out, README
# "Reference behaviours"). That moves its KD term by up to 4e-5 relative here (K = 10, T = 3), the total by 2e-8 and
# the gradients by up to 7e-8: the limits below are 2.5 to 15 times that, still far below a changed term.
ONE_FLOAT64 = {"losses": 1e-4, "loss": 1e-6, "grad_norm": 1e-6, "grad_entries": 1e-6, "grad_whole": 1e-6}
# ... and its gate's Linear bias feeds a BatchNorm1d, so its gradient is exactly zero: both sides record rounding
# noise (~1e-15) there, with no meaningful relative difference.
ONE_SKIP = ["control_v1.bias"]

CASES = ["cskd-preact_resnet18", "pskd-preact_resnet18", "tfkd_reg-cifar_resnet18", "tfkd_self-cifar_resnet18",
         "dlb-cifar_resnet32", "bake-preact_resnet18", "one-cifar_resnet32", "sla_sd-resnet18",
         "zipf_ls-preact_resnet18", "uskd-cifar_resnet18"]
NAMES = [f"{case}-{dtype}" for case in CASES for dtype in ("float64", "float32")]


def test_every_case_is_recorded_in_both_precisions():
    assert set(NAMES) <= set(harness.fixture_names())


@pytest.mark.parametrize("name", NAMES)
def test_matches_the_official_code(name):
    fixture = harness.load(name)
    steps = harness.selfkd_steps(fixture)
    if fixture["method"] != "one":
        harness.check(fixture, steps, FLOAT64, FLOAT32_FACTOR, FLOAT32_GRADIENTS)
        return
    worst = harness.largest_differences(fixture, steps, ONE_SKIP)
    limits = harness.tolerances(fixture, FLOAT64, FLOAT32_FACTOR, FLOAT32_GRADIENTS)
    limits = {kind: max(limit, ONE_FLOAT64.get(kind, 0.0)) for kind, limit in limits.items()}  # the smoothing
    assert all(worst[kind] <= limits[kind] for kind in limits), (worst, limits)


@pytest.mark.parametrize("case, epochs", [("pskd-preact_resnet18", [0, 0, 1, 1]), ("dlb-cifar_resnet32", [0, 0, 1, 1]),
                                          ("one-cifar_resnet32", [0, 0, 1])])
def test_the_stateful_cases_cross_an_epoch_boundary(case, epochs):
    """PS-KD's table and DLB's cache are read across the boundary, ONE's ramp changes there; SGD steps between."""
    fixture = harness.load(f"{case}-float64")
    assert [b["epoch"] for b in fixture["batches"]] == epochs and fixture["optimizer"]["lr"] > 0
    if case.startswith("dlb"):  # only the very first step is plain CE: the cache carries over the boundary
        kd = [step["losses"]["kd"] for step in fixture["steps"]]
        assert kd[0] == 0 and min(kd[1:]) > 0
