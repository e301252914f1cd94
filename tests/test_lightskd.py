"""LightSKD (drg, dsr, lightskd): DRG head, DSR cache, their losses, gradients, state and recipes."""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import fault_methods  # noqa: F401  (registers test_lightskd_stop)
from conftest import tiny_config
from hand import kd as _kd_by_hand
from hand import softmax as _softmax
from selfkd import create_model
from selfkd.config import make_config
from selfkd.engine import train
from selfkd.errors import ConfigError, Interrupted
from selfkd.losses import cross_entropy
from selfkd.methods import create_method
from selfkd.methods.lightskd import DRG, DSR, LightSKD
from selfkd.models.base import Backbone

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class LogitsAsImages(Backbone):
    """A stand-in backbone whose 'images' are its logits, so DSR can be fed hand-chosen logit batches."""

    def __init__(self, num_classes: int):
        nn.Module.__init__(self)
        self.fc = nn.Linear(1, num_classes)  # only for num_classes; receives no gradient, never stepped

    def forward(self, x):
        return x, [x]


def _dsr(num_classes=3, **kwargs) -> DSR:
    return DSR(LogitsAsImages(num_classes), num_classes, **kwargs).train()


def _step(method, rows, requires_grad=False):
    z = torch.tensor(rows, requires_grad=requires_grad)
    targets = torch.zeros(len(rows), dtype=torch.long)
    return z, method(z, targets)


# ---------------------------------------------------------------- DSR


def test_dsr_term_is_sorted_profile_kl_and_absent_on_first_step_of_each_epoch():
    method = _dsr(beta=0.5, temperature=2.0)
    method.on_epoch_start(0, 2)
    first = [[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]]
    second = [[2.0, 0.0, 1.0], [5.0, 1.0, 1.5]]
    z, out = _step(method, first)
    assert out.losses["dsr"].item() == 0.0  # first step: no previous batch
    assert out.loss.item() == pytest.approx(out.losses["ce"].item())
    z, out = _step(method, second)
    expected = 0.5 * _kd_by_hand([sorted(r) for r in first], [sorted(r) for r in second], 2.0)
    assert out.losses["dsr"].item() == pytest.approx(expected, rel=1e-5)
    assert out.loss.item() == pytest.approx(cross_entropy(z, torch.zeros(2, dtype=torch.long)).item() + expected)
    # a new epoch starts without a previous batch although the cache still holds the last one
    method.on_epoch_start(1, 2)
    _, out = _step(method, first)
    assert out.losses["dsr"].item() == 0.0


def test_dsr_pairs_the_first_rows_when_batch_sizes_differ():
    method = _dsr(temperature=4.0)
    big = [[1.0, 3.0, 2.0], [0.0, -1.0, 4.0], [2.0, 2.0, 0.0]]
    small = [[2.0, 0.0, 1.0], [5.0, 1.0, 1.5]]
    _step(method, big)
    _, out = _step(method, small)  # previous 3 rows, current 2: pair rows 0, 1
    assert out.losses["dsr"].item() == pytest.approx(_kd_by_hand([sorted(r) for r in big[:2]],
                                                                 [sorted(r) for r in small], 4.0), rel=1e-5)
    _, out = _step(method, big)  # previous 2 rows, current 3: pair rows 0, 1
    assert out.losses["dsr"].item() == pytest.approx(_kd_by_hand([sorted(r) for r in small],
                                                                 [sorted(r) for r in big[:2]], 4.0), rel=1e-5)
    assert method.dsr_prev.shape == (3, 3) and method.dsr_prev_rows.item() == 3


def test_dsr_gradient_flows_through_the_sort_and_not_into_the_cache():
    t, beta = 2.0, 1.0
    method = _dsr(beta=beta, temperature=t)
    z_prev, _ = _step(method, [[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]], requires_grad=True)
    z, out = _step(method, [[2.0, 0.0, 1.5], [5.0, 1.0, 1.5]], requires_grad=True)
    grad_z, grad_prev = torch.autograd.grad(out.losses["dsr"], [z, z_prev], allow_unused=True)
    assert grad_prev is None and not method.dsr_prev.requires_grad
    assert (grad_z != 0).all()
    # d/ds KD_T(prev, s) = β·T·(σ(s/T) − σ(prev/T))/B per sorted position, routed back to the unsorted slot
    for b, (row, prev) in enumerate(zip(z.tolist(), [[1.0, 2.0, 3.0], [-1.0, 0.0, 4.0]])):
        order = sorted(range(3), key=lambda k: row[k])
        p, q = _softmax(sorted(row), t), _softmax(prev, t)
        for rank, k in enumerate(order):
            assert grad_z[b, k].item() == pytest.approx(beta * t * (p[rank] - q[rank]) / 2, rel=1e-5, abs=1e-7)


def test_dsr_cache_is_owned_storage_updated_in_place():
    method = _dsr()
    assert method.dsr_prev.shape == (0, 3) and method.dsr_prev_rows.item() == 0
    _step(method, [[1.0, 3.0, 2.0], [0.0, -1.0, 4.0]])
    storage = method.dsr_prev.data_ptr()
    z, out = _step(method, [[2.0, 0.0, 1.0], [5.0, 1.0, 1.5]], requires_grad=True)
    assert method.dsr_prev.data_ptr() == storage  # the same storage, written in place (CUDA graphs)
    assert torch.equal(method.dsr_prev, z.detach().sort(dim=1).values) and method.dsr_prev_rows.item() == 2
    _step(method, [[7.0, 8.0, 9.0]])  # a smaller batch neither reallocates nor shrinks the cache
    assert method.dsr_prev.data_ptr() == storage and method.dsr_prev_rows.item() == 1
    assert method.dsr_prev[0].tolist() == [7.0, 8.0, 9.0]


def test_dsr_cache_survives_state_dict_round_trip_with_another_batch_size():
    method = _dsr()
    _step(method, [[1.0, 3.0, 2.0], [0.0, -1.0, 4.0], [2.0, 2.0, 0.0]])
    fresh = _dsr()
    _step(fresh, [[0.0, 0.0, 1.0]])  # a cache of another size, which loading must replace
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.dsr_prev, method.dsr_prev) and fresh.dsr_prev_rows.item() == 3
    assert set(method.state_dict()) == {"dsr_prev", "dsr_prev_rows", "backbone.fc.weight", "backbone.fc.bias"}
    nxt = [[2.0, 0.0, 1.0], [5.0, 1.0, 1.5]]
    assert _step(fresh, nxt)[1].losses["dsr"].item() == pytest.approx(_step(method, nxt)[1].losses["dsr"].item())


def test_dsr_adds_no_parameters(tiny_resnet):
    method = create_method("dsr", tiny_resnet())
    assert method.extra_parameters() == 0 and len(method.heads) == 0


# ---------------------------------------------------------------- DRG


def _head_params(c: int, k: int) -> int:
    """SepConv(i, o) = 2 depthwise 3×3 (9i each) + 1×1 i→i + BN(i) + 1×1 i→o + BN(o)."""
    def sep(i, o):
        return 18 * i + i * i + 2 * i + i * o + 2 * o

    return sep(c, c) + 2 * c + sep(c, 2 * c) + sep(2 * c, 4 * c) + 4 * c * k + k


def test_drg_head_parameter_counts_follow_stage_channels():
    assert _head_params(128, 100) == 342_116  # the spec's count, from the formula
    r18 = create_method("drg", create_model("cifar_resnet18", num_classes=100))
    assert r18.extra_parameters() == 342_116
    r50 = create_method("drg", create_model("cifar_resnet50", num_classes=100))
    assert r50.backbone.stage_channels[1] == 512
    assert r50.extra_parameters() == _head_params(512, 100) == 4_710_500  # spec: ≈ 4.71 M


def test_drg_head_attention_mask_and_odd_sizes(tiny_resnet):
    method = create_method("drg", tiny_resnet(num_classes=10)).train()
    head = method.heads[0]
    assert head.attention[0][0].in_channels == method.backbone.stage_channels[1] == 16
    images = torch.randn(3, 3, 33, 33)  # F_2 is 17×17: the upsampled mask must still match it
    _, feats = method.backbone(images)
    mask = torch.sigmoid(nn.functional.interpolate(head.attention(feats[1]), size=feats[1].shape[-2:],
                                                   mode="bilinear", align_corners=True))
    assert mask.shape == feats[1].shape and mask.min() >= 0.5 and mask.max() < 1  # ReLU before the sigmoid
    assert head(feats[1]).shape == (3, 10)
    assert method(images, torch.tensor([0, 1, 2])).loss.isfinite()


def _grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def _nonzero(grads):
    return [g is not None and g.abs().sum().item() > 0 for g in grads]


def test_drg_losses_and_which_parameters_each_term_trains(tiny_resnet):
    method = create_method("drg", tiny_resnet(num_classes=10), alpha=0.3, temperature=3.0).train()
    images, targets = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    out = method(images, targets)
    assert list(out.losses) == ["ce", "drg_ce", "drg_kd"]
    # the same forward by hand (train-mode BN: outputs do not depend on the running statistics)
    z, feats = method.backbone(images)
    a = method.heads[0](feats[1])
    assert out.losses["ce"].item() == pytest.approx(cross_entropy(z, targets).item(), rel=1e-5)
    assert out.losses["drg_ce"].item() == pytest.approx(cross_entropy(a, targets).item(), rel=1e-5)
    assert out.losses["drg_kd"].item() == pytest.approx(0.3 * _kd_by_hand(a.tolist(), z.tolist(), 3.0), rel=1e-4)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.losses.values()), rel=1e-5)

    head = list(method.heads.parameters())
    backbone = method.backbone
    early = list(backbone.stem.parameters()) + list(backbone.stages[1].parameters())
    late = list(backbone.stages[2].parameters()) + list(backbone.fc.parameters())
    kd = out.losses["drg_kd"]
    assert not any(_nonzero(_grads(kd, head)))  # the head's logits are detached in the KD term
    assert all(_nonzero(_grads(kd, [backbone.fc.weight, backbone.stem[0].weight])))  # KD trains the backbone
    aux_ce = out.losses["drg_ce"]
    assert all(_nonzero(_grads(aux_ce, [p for p in head if p.ndim > 1])))  # the head learns from its CE ...
    assert all(_nonzero(_grads(aux_ce, [p for p in early if p.ndim > 1])))  # ... through undetached F_2
    assert not any(_nonzero(_grads(aux_ce, late)))


def test_multi_stage_drg_teacher_is_the_mean_of_distributions(tiny_resnet):
    t, alpha = 4.0, 0.2
    method = create_method("drg", tiny_resnet(num_classes=10), stages=[2, 3]).train()
    assert [h.attention[0][0].in_channels for h in method.heads] == method.backbone.stage_channels[1:3]
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = method(images, targets)
    z, feats = method.backbone(images)
    a2, a3 = method.heads[0](feats[1]).tolist(), method.heads[1](feats[2]).tolist()
    expected = 0.0
    for r2, r3, zr in zip(a2, a3, z.tolist()):
        q = [(x + y) / 2 for x, y in zip(_softmax(r2, t), _softmax(r3, t))]
        p = _softmax(zr, t)
        expected += sum(qi * (math.log(qi) - math.log(pi)) for qi, pi in zip(q, p))
    expected *= alpha * t * t / 4
    assert out.losses["drg_kd"].item() == pytest.approx(expected, rel=1e-4)
    mean_of_kds = alpha * (_kd_by_hand(a2, z.tolist(), t) + _kd_by_hand(a3, z.tolist(), t)) / 2
    assert expected != pytest.approx(mean_of_kds, rel=1e-3)  # not the mean of two KD losses
    two_ce = cross_entropy(torch.tensor(a2), targets) + cross_entropy(torch.tensor(a3), targets)
    assert out.losses["drg_ce"].item() == pytest.approx(two_ce.item(), rel=1e-5)


@pytest.mark.parametrize("stages", [[], [0], [5], [2, 2]])
def test_bad_stages_are_refused(tiny_resnet, stages):
    with pytest.raises(ConfigError, match="stage numbers between 1 and 4"):
        create_method("drg", tiny_resnet(), stages=stages)


def test_options_belong_to_their_method(tiny_resnet):
    with pytest.raises(ConfigError, match="Unknown option 'alpha' for method 'dsr'"):
        create_method("dsr", tiny_resnet(), alpha=0.2)
    with pytest.raises(ConfigError, match="Unknown option 'beta' for method 'drg'"):
        create_method("drg", tiny_resnet(), beta=1.0)
    with pytest.raises(ConfigError, match="'temperature' must be greater than 0 \\(got 0.0\\); the default is 4.0"):
        create_method("lightskd", tiny_resnet(), temperature=0.0)


# ---------------------------------------------------------------- LightSKD


def test_lightskd_has_both_terms_and_deploys_the_backbone_alone(tiny_resnet):
    method = create_method("lightskd", tiny_resnet(num_classes=10))
    assert isinstance(method, LightSKD) and not isinstance(method, (DRG, DSR))
    assert (method.alpha, method.beta, method.temperature, method.head_stages) == (0.2, 1.0, 4.0, (2,))
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    method.train()
    assert list(method(images, targets).losses) == ["ce", "drg_ce", "drg_kd", "dsr"]
    other = torch.randn(4, 3, 32, 32)  # DSR compares with the previous batch: the same images would give KL ≈ 0
    assert method(other, targets).losses["dsr"].item() > 1e-4
    deploy = method.eval_model()
    assert deploy is method.backbone
    assert set(deploy.state_dict()) == {k[len("backbone."):] for k in method.state_dict() if k.startswith("backbone.")}
    assert not any("head" in k or "dsr" in k for k in deploy.state_dict())
    method.eval()
    assert torch.equal(method(images), method.backbone(images)[0])


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("path, method_name, num_classes", [
    ("cifar100/drg_resnet18.yaml", "drg", 100),
    ("cifar100/dsr_resnet18.yaml", "dsr", 100),
    ("cifar100/lightskd_resnet18.yaml", "lightskd", 100),
    ("cifar100/ce_resnet18_lightskd_recipe.yaml", "ce", 100),
    ("tinyimagenet/lightskd_resnet18.yaml", "lightskd", 200),
    ("cub200/lightskd_resnet18.yaml", "lightskd", 200),
])
def test_recipes_load_and_build(path, method_name, num_classes):
    cfg = make_config(CONFIGS / path)
    assert cfg.method.name == method_name
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.1, 0.9, False, 5e-4)
    assert (cfg.data.batch_size, cfg.train.epochs, cfg.data.augment) == (128, 200, "rrc_flip")
    assert (cfg.schedule.name, cfg.schedule.milestones, cfg.schedule.gamma) == ("multistep", [60, 120, 160], 0.1)
    if path.startswith("cifar100"):
        assert cfg.data.image_size == 32 and tuple(cfg.data.rrc_scale) == (0.08, 1.0)
        assert cfg.data.mean == (0.4914, 0.4822, 0.4465) and cfg.data.std == (0.2470, 0.2435, 0.2616)
    model = create_model(cfg.model.name, num_classes=num_classes, **cfg.model.options())
    method = create_method(cfg.method.name, model, num_classes=num_classes, **cfg.method.options())
    if method_name in ("drg", "lightskd"):
        assert method.extra_parameters() == _head_params(model.stage_channels[1], num_classes)


# ---------------------------------------------------------------- end to end

# 16-pixel synthetic images with flips only: a few seconds per run, and every method learns in 2 epochs.
SMALL_DATA = {"augment": "flip", "options": {"num_classes": 10, "train_size": 512, "test_size": 128, "image_size": 16}}


@pytest.mark.parametrize("method_name", ["drg", "dsr", "lightskd"])
def test_short_run_learns(tmp_path, method_name):
    summary = train(tiny_config(tmp_path, method=method_name, epochs=2, data=SMALL_DATA))
    assert summary["final"]["top1"] > 50  # chance is 10 %
    assert summary["extra_params"] == (0 if method_name == "dsr" else _head_params(16, 10))
    rows = [json.loads(line) for line in (tmp_path / f"run_{method_name}" / "metrics.jsonl").read_text().splitlines()]
    if method_name != "drg":
        assert rows[-1]["train/loss_dsr"] > 0
    if method_name != "dsr":
        assert rows[-1]["train/loss_drg_kd"] > 0


def _final_state(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["method_state"]


def test_resumed_runs_equal_the_straight_run(tmp_path):
    """Resumed after epoch 1, and mid-epoch 2 (where the next step needs the checkpointed DSR cache)."""
    # 112 images = batches of 32, 32, 32, 16: the cache meets a smaller last batch and an epoch reset
    data = {**SMALL_DATA, "train_subset": 112, "test_subset": 32}

    def config(name, epochs, stop_at=0):
        cfg = tiny_config(tmp_path, method="test_lightskd_stop", epochs=epochs, data=data,
                          schedule={"name": "constant"})
        cfg["run_dir"], cfg["method"]["at_step"] = str(tmp_path / name), stop_at
        return cfg

    train(config("straight", 2))
    train(config("after_epoch", 1))
    train(config("after_epoch", 2), resume=True)
    with pytest.raises(Interrupted):
        train(config("mid_epoch", 2, stop_at=6))  # step 2 of epoch 2
    assert _final_state(tmp_path / "mid_epoch")["dsr_prev_rows"].item() == 32
    train(config("mid_epoch", 2), resume=True)
    expected = _final_state(tmp_path / "straight")
    assert expected["dsr_prev"].shape == (32, 10) and expected["dsr_prev_rows"].item() == 16
    for run in ("after_epoch", "mid_epoch"):
        state = _final_state(tmp_path / run)
        assert state.keys() == expected.keys()
        for key in expected:
            assert torch.equal(state[key], expected[key]), (run, key)
