"""TF-KD: the virtual-teacher loss in its three forms by hand; the pretrained teacher (frozen, eval mode, not
exported, refused when it does not fit), its stand-in for tests and benchmarks; recipes and runs."""
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hand import (
    CONFIGS,
    A,
    PixelNet,
    as_images,
    assert_rows,
    assert_selfkdlib_recipe,
    ce,
    checkpoint_state,
    has_grad_in,
    kd,
    kl,
    no_grad_in,
    quick_config,
    soft_ce,
    softmax,
)
from selfkd.config import make_config
from selfkd.engine import train
from selfkd.errors import CheckpointError, ConfigError
from selfkd.methods import create_method
from selfkd.methods.tfkd import TFKDSelf
from selfkd.weights import load_weights


def _virtual_teacher(y, k=3, a=0.99, tau=20.0):
    u = [a if c == y else (1 - a) / (k - 1) for c in range(k)]
    return softmax(u, tau)


def test_tfkd_reg_official_loss_by_hand():
    method = create_method("tfkd_reg", PixelNet(3, 3)).train()
    z = as_images(A, requires_grad=True)
    out = method(z, torch.tensor([1, 2]))
    q = [_virtual_teacher(1), _virtual_teacher(2)]
    assert q[0][1] == pytest.approx(math.exp(0.99 / 20) / (math.exp(0.99 / 20) + 2 * math.exp(0.005 / 20)))
    reg = sum(kl(qb, softmax(zb)) for qb, zb in zip(q, A)) / 2
    assert out.losses["ce"].item() == pytest.approx(0.9 * ce(A, [1, 2]), rel=1e-6)
    assert out.losses["reg"].item() == pytest.approx(0.1 * reg, rel=1e-5)
    out.losses["reg"].backward()  # d/dz of w·KL_bm(q ‖ σ(z)) = w·(σ(z) − q)/B: q is a constant target
    expected = [[0.1 * (p - qi) / 2 for p, qi in zip(softmax(zb), qb)] for zb, qb in zip(A, q)]
    assert_rows(z.grad.view(2, 3), expected, atol=1e-7)


def test_tfkd_reg_student_temperature_and_selfkdlib_forms():
    y = [1, 2]
    q = [_virtual_teacher(1), _virtual_teacher(2)]
    paper = create_method("tfkd_reg", PixelNet(3, 3), student_temperature=True).train()
    out = paper(as_images(A), torch.tensor(y))
    assert out.losses["reg"].item() == pytest.approx(
        0.1 * sum(kl(qb, softmax(zb, 20.0)) for qb, zb in zip(q, A)) / 2, abs=2e-8)  # σ(z/τ), no τ²
    skl = create_method("tfkd_reg", PixelNet(3, 3), compat="selfkdlib").train()
    assert (skl.ce_weight, skl.reg_weight) == (1.0, 1 / 20)
    out = skl(as_images(A), torch.tensor(y))
    q_ls = [[0.9 if c == yb else 0.05 for c in range(3)] for yb in y]  # LS target, ε = 0.1, K = 3
    scaled = [[v / 20 for v in row] for row in A]
    assert out.losses["ce"].item() == pytest.approx(ce(A, y), rel=1e-6)
    assert out.losses["reg"].item() == pytest.approx(soft_ce(scaled, q_ls) / 20, rel=1e-6)
    with pytest.raises(ConfigError, match="student_temperature"):
        create_method("tfkd_reg", PixelNet(3, 3), compat="selfkdlib", student_temperature=True)


def test_tfkd_reg_run_learns(tmp_path):
    summary = train(quick_config(tmp_path, "tfkd_reg"))
    assert summary["final"]["top1"] > 50


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A plain-CE run (4 synthetic classes, width 8) whose model.safetensors is the TF-KD-self teacher."""
    tmp = tmp_path_factory.mktemp("teacher")
    train(quick_config(tmp, "ce", run="ce"))
    return tmp / "ce" / "model.safetensors"


def test_tfkd_self_teacher_is_frozen_eval_mode_and_not_deployed(teacher_run, tiny_resnet):
    method = create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(teacher_run))
    saved = load_file(str(teacher_run))
    assert all(torch.equal(saved[k], v) for k, v in method.teacher.state_dict().items())
    assert all(not p.requires_grad for p in method.teacher.parameters())
    assert method.extra_parameters() == 0 and method.eval_model() is method.backbone
    method.train()
    assert method.backbone.training and not method.teacher.training  # teacher stays in eval mode
    stats = method.teacher.stages[0][0].bn1.running_mean.clone()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    out = method(x, y)
    out.loss.backward()
    assert no_grad_in(method.teacher) and has_grad_in(method.backbone)
    assert torch.equal(method.teacher.stages[0][0].bn1.running_mean, stats)  # BN statistics untouched
    with torch.no_grad():
        zt = method.teacher(x)[0].tolist()  # eval mode, as inside the step
    z = out.logits.tolist()
    assert out.losses["ce"].item() == pytest.approx(0.05 * ce(z, y.tolist()), rel=1e-4)
    assert out.losses["kd"].item() == pytest.approx(0.475 * kd(zt, z, 6.0), rel=1e-4)


def test_tfkd_self_run_learns_and_keeps_the_teacher(teacher_run, tmp_path):
    cfg = quick_config(tmp_path, "tfkd_self", teacher_weights=str(teacher_run))
    summary = train(cfg)
    assert summary["final"]["top1"] > 50 and summary["extra_params"] == 0
    saved = load_file(str(teacher_run))
    state = checkpoint_state(cfg["run_dir"])
    assert all(torch.equal(state[f"teacher.{k}"], v) for k, v in saved.items())  # never trained
    exported = load_file(str(Path(cfg["run_dir"]) / "model.safetensors"))
    assert not any(k.startswith("teacher") for k in exported) and exported.keys() == saved.keys()


def test_tfkd_self_refuses_bad_teacher_files(teacher_run, tmp_path, tiny_resnet):
    """The teacher goes through model.pretrained's loader, exactly: the network as trained or nothing."""
    good = str(teacher_run)
    with pytest.raises(ConfigError, match="teacher_weights"):
        create_method("tfkd_self", tiny_resnet(4))
    with pytest.raises(CheckpointError, match="No weights file"):
        create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(tmp_path / "missing.safetensors"))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"definitely not safetensors")
    with pytest.raises(CheckpointError, match="not a readable"):
        create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(corrupt))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ConfigError, match="cifar_resnet18's stem.0.weight, .* are not in them; their w have no place"):
        create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(foreign))
    with pytest.raises(ConfigError, match=r"shapes differ: fc.weight \(4, 64\) in the weights, \(10, 64\) in the model, fc.bias"):
        create_method("tfkd_self", tiny_resnet(10), teacher_weights=good)  # a teacher keeps its class layer
    with pytest.raises(ConfigError, match="shares no network with preact_resnet18"):
        create_method("tfkd_self", tiny_resnet(4, name="preact_resnet18"), teacher_weights=good)
    with pytest.raises(ConfigError, match="does not fit"):
        create_method("tfkd_self", tiny_resnet(4, width=16), teacher_weights=good)
    grey = tiny_resnet(4, in_channels=1)
    with pytest.raises(ConfigError, match=r"stem.0.weight \(8, 3, 3, 3\) in the weights, \(8, 1, 3, 3\)"):
        create_method("tfkd_self", grey, teacher_weights=good)  # a teacher keeps its first conv too


def test_tfkd_self_takes_the_backbone_of_a_whole_method_file_and_a_plain_state_dict(teacher_run, tmp_path,
                                                                                    tiny_resnet):
    """A run that evaluated a whole method (ONE's ensemble) wrote its backbone under ``backbone.``: that backbone is
    the teacher; so is a plain torch.save of the network's state dict."""
    saved = load_file(str(teacher_run))
    meta = {**load_weights(teacher_run)[1], "inference": "method", "method": "one"}
    ensemble = tmp_path / "ensemble.safetensors"
    branch = {"branches.0.weight": torch.ones(3)}
    save_file({**{f"backbone.{k}": v for k, v in saved.items()}, **branch}, str(ensemble),
              metadata={k: json.dumps(v) for k, v in meta.items()})
    plain = tmp_path / "plain.pt"
    torch.save(saved, plain)
    for path in (ensemble, plain):
        method = create_method("tfkd_self", tiny_resnet(4), teacher_weights=str(path))
        assert all(torch.equal(method.teacher.state_dict()[k], v) for k, v in saved.items())


def test_tfkd_self_example_options_write_a_teacher_it_loads(tiny_resnet, tmp_path):
    model = tiny_resnet(4)
    options = TFKDSelf.example_options(model, tmp_path)
    assert Path(options["teacher_weights"]).parent == tmp_path
    method = create_method("tfkd_self", model, **options)
    teacher = method.teacher.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in model.state_dict().items())  # the untrained student's weights


def test_recipes_load_and_build(tiny_resnet):
    assert_selfkdlib_recipe("tfkd_reg", tiny_resnet)
    options = assert_selfkdlib_recipe("tfkd_self").method.options()
    ce_run = make_config(CONFIGS / "cifar100" / "ce_resnet18.yaml").run_path
    assert Path(options["teacher_weights"]) == ce_run / "model.safetensors"  # the CE recipe's exported weights
