"""DKS: the pairwise KD by hand at each temperature, the exits' structure and size."""
import pytest
import torch

from hand import FC100, S4
from hand import batch as _batch
from hand import ce as _ce
from hand import full_resnet18 as _full_resnet18
from hand import kd as _kd
from hand import stage_params as _stage_params
from selfkd.methods import create_method

K = 5  # classes in the hand-computed examples


@pytest.mark.parametrize("options, t", [({}, 1.0), ({"compat": "selfkdlib"}, 4.0),
                                        ({"compat": "selfkdlib", "temperature": 2.0}, 2.0)])
def test_dks_pairwise_kd_by_hand(tiny_resnet, options, t):
    model = tiny_resnet(num_classes=K)
    method = create_method("dks", model, num_classes=K, **options)
    x, y = _batch()
    out = method(x, y)
    with torch.no_grad():
        z, feats = model(x)
        zs = [z, method.exits[0](feats[1])[0], method.exits[1](feats[2])[0]]
    assert out.losses["ce"].item() == pytest.approx(sum(_ce(v, y) for v in zs), rel=1e-5)
    pairs = sum(_kd(zs[j], zs[i], t) for i in range(3) for j in range(3) if i != j)
    assert out.losses["kd"].item() == pytest.approx(pairs, rel=1e-4, abs=1e-5)
    method.eval()
    assert torch.equal(method(x), model(x)[0])


def test_dks_exit_structure_and_parameters():
    method = create_method("dks", _full_resnet18(), num_classes=100)
    a, b = method.exits
    assert [len(s) for s in a.stages] == [1, 2] and [len(s) for s in b.stages] == [2]
    exit_a = _stage_params(128, 256, 1) + S4 + FC100
    assert method.extra_parameters() == exit_a + S4 + FC100 == 17_809_096
    assert method.eval_model() is method.backbone
