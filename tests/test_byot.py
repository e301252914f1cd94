"""BYOT: exit sizes, the loss term by term and what each term trains, the stage-copy variant and the
evaluation options and a run that learns."""
import pytest
import torch

from hand import ce, has_grad_in, kd, no_grad_in, quick_config
from selfkd import create_model
from selfkd.engine import train
from selfkd.errors import ConfigError
from selfkd.methods import create_method


def test_byot_parameter_counts_full_resnet18():
    model = create_model("cifar_resnet18", num_classes=100)
    byot = create_method("byot", model)
    # conv1x1 C→128 (bias), BN, conv k×k 128→128 (bias), BN, conv1x1 128→512 (bias), BN, FC 512→100
    per_exit = [c * 128 + 128 + 256 + 128 * 128 * k * k + 128 + 256 + 128 * 512 + 512 + 1024 + 512 * 100 + 100
                for c, k in ((64, 8), (128, 4), (256, 2))]
    assert byot.extra_parameters() == sum(per_exit) == 1_791_020
    assert [head.features[3].kernel_size[0] for head in byot.exits] == [8, 4, 2]
    copy = create_method("byot", model, branch="stage_copy")
    block3 = 128 * 256 * 9 + 256 * 256 * 9 + 128 * 256 + 3 * 512  # stage-3 block with its down-sampling
    block4 = 256 * 512 * 9 + 512 * 512 * 9 + 256 * 512 + 3 * 1024
    assert copy.extra_parameters() == (block3 + block4 + 51_300) + (block4 + 51_300) == 8_367_816
    assert copy.eval_model() is model


def _byot_by_hand(method, x, y):
    """The default loss written out term by term from the modules' outputs."""
    feats = method.backbone.features(x)
    h4 = feats[-1].mean(dim=(2, 3))
    z4 = method.backbone.fc(h4)
    outs = [(head.fc(head.features(feats[i]).mean(dim=(2, 3))), head.features(feats[i]).mean(dim=(2, 3)))
            for i, head in enumerate(method.exits)]

    def ce_(z):
        return -z.log_softmax(1).gather(1, y[:, None]).mean()

    def kd_(t, s, T):
        q = (t / T).softmax(1)
        return T * T * (q * (q.log() - (s / T).log_softmax(1))).sum() / len(y)

    ce_sum = ce_(z4) + sum(ce_(z) for z, _ in outs)
    kd_sum = sum(kd_(z4, z, 3.0) for z, _ in outs)
    feat = sum((((h - h4) ** 2) * ((h > 0) | (h4 > 0)).float()).sum() for _, h in outs)
    return 0.9 * ce_sum, 0.1 * kd_sum, 1e-6 * feat


def test_byot_loss_and_which_parameters_each_term_trains(tiny_resnet):
    method = create_method("byot", tiny_resnet(10)).train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])
    out = method(x, y)
    with torch.no_grad():
        expected = _byot_by_hand(method, x, y)
    for name, value in zip(("ce", "kd", "feature"), expected):
        assert out.losses[name].item() == pytest.approx(value.item(), rel=1e-4), name
    assert torch.equal(out.logits, method.backbone(x)[0].detach())
    stage4, fc = method.backbone.stages[3], method.backbone.fc
    out.losses["kd"].backward(retain_graph=True)  # teacher z_4 is detached: nothing of stage 4 / fc learns
    assert no_grad_in(stage4) and no_grad_in(fc) and has_grad_in(method.exits)
    method.zero_grad()
    out.losses["feature"].backward(retain_graph=True)  # h_4 is detached too; the exits pull on stages 1-3
    assert no_grad_in(stage4) and no_grad_in(fc)
    assert has_grad_in(method.exits) and has_grad_in(method.backbone.stages[0])
    method.zero_grad()
    out.losses["ce"].backward()
    assert has_grad_in(stage4) and has_grad_in(fc)


def test_byot_stage_copy_loss_and_eval_options(tiny_resnet):
    method = create_method("byot", tiny_resnet(10), branch="stage_copy").train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])
    out = method(x, y)
    with torch.no_grad():
        feats = method.backbone.features(x)
        z = method.backbone.fc(feats[-1].mean(dim=(2, 3)))
        aux = [branch(feats[i]) for branch, i in zip(method.exits, (1, 2))]  # exits from F_2 and F_3
    assert out.losses["ce"].item() == pytest.approx(
        ce(z.tolist(), y.tolist()) + sum(ce(a.tolist(), y.tolist()) for a, _ in aux), rel=1e-4)
    assert out.losses["kd"].item() == pytest.approx(sum(kd(z.tolist(), a.tolist(), 4.0) for a, _ in aux), rel=1e-4)
    mse = sum(((g - feats[-1]) ** 2).mean().item() for _, g in aux)
    assert out.losses["feature"].item() == pytest.approx(0.05 * mse, rel=1e-4)
    with torch.no_grad():
        assert torch.equal(method.eval()(x), method.backbone(x)[0])  # inference: the backbone alone
        ensemble = create_method("byot", tiny_resnet(10), branch="stage_copy", eval="ensemble").eval()
        first = create_method("byot", tiny_resnet(10), branch="stage_copy", eval="exit1").eval()
        first.load_state_dict(ensemble.state_dict())
        feats = ensemble.backbone.features(x)
        z = ensemble.backbone.fc(feats[-1].mean(dim=(2, 3)))
        aux = [branch(feats[i])[0] for branch, i in zip(ensemble.exits, (1, 2))]
        assert torch.allclose(ensemble(x), (z + aux[0] + aux[1]) / 3, atol=1e-6)
        assert torch.allclose(first(x), aux[0])
    with pytest.raises(ConfigError, match="2 auxiliary exits"):
        create_method("byot", tiny_resnet(10), branch="stage_copy", eval="exit3")


def test_byot_run_learns(tmp_path):
    summary = train(quick_config(tmp_path, "byot"))
    assert summary["final"]["top1"] > 50
