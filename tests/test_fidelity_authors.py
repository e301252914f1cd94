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
# float32 (weights fixed; harness.tolerances): loss terms, total and each tensor's gradient norm against the whole
# gradient's within 20 times the official float32 run's own distance from its float64 run of the same steps. Each side
# rounds about that much, in its own order and with its own kernels (as test_fidelity_lightskd.py).
FLOAT32_FACTOR = 20.0
# ONE: its KLLoss adds 1e-7 to every teacher probability (a guard against log 0 that selfkd leaves out, README
# "Reference behaviours"). That moves its KD term by up to 4e-5 relative here (K = 10, T = 3), the total by 2e-8 and
# the gradients by up to 7e-8: the limits below are 2.5 to 15 times that, still far below a changed term. They are
# the least allowed in float32 too, where the smoothing is there as well.
ONE_FLOAT64 = {"losses": 1e-4, "loss": 1e-6, "grad_norm": 1e-6, "grad_entries": 1e-6, "grad_whole": 1e-6}

CASES = ["cskd-preact_resnet18", "pskd-preact_resnet18", "tfkd_reg-cifar_resnet18", "tfkd_self-cifar_resnet18",
         "dlb-cifar_resnet32", "bake-preact_resnet18", "one-cifar_resnet32", "sla_sd-resnet18",
         "zipf_ls-preact_resnet18", "uskd-cifar_resnet18"]
NAMES = [f"{case}-{dtype}" for case in CASES for dtype in ("float64", "float32")]


def test_every_case_is_recorded_in_both_precisions():
    assert set(NAMES) <= set(harness.fixture_names())


@pytest.mark.parametrize("name", NAMES)
def test_matches_the_official_code(name):
    fixture = harness.load(name)
    if fixture["method"] != "one":
        harness.check(fixture, FLOAT64, FLOAT32_FACTOR)
        return
    worst = harness.compare(fixture)
    limits = {kind: max(limit, ONE_FLOAT64[kind]) for kind, limit in harness.tolerances(fixture, FLOAT64,
                                                                                        FLOAT32_FACTOR).items()}
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
