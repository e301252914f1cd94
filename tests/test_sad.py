"""SAD: the attention map and the loss by hand (the deeper stage is the detached, up-sampled teacher), and the
weight and start epoch."""
import pytest
import torch
import torch.nn.functional as F

from hand import batch as _batch
from hand import ce as _ce
from hand import softmax as _softmax
from selfkd.methods import create_method
from selfkd.methods.sad import spatial_attention

K = 5  # classes in the hand-computed examples


def test_sad_attention_map_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, C=2, 1, 2)
    assert spatial_attention(f).tolist()[0] == pytest.approx(_softmax([5.0, 2.0]), rel=1e-6)  # mean_c f²
    assert spatial_attention(f, "sum").tolist()[0] == pytest.approx(_softmax([10.0, 4.0]), rel=1e-6)


def test_sad_loss_upsamples_the_detached_deeper_map(tiny_resnet):
    method = create_method("sad", tiny_resnet(num_classes=K), num_classes=K)
    shallow = torch.tensor([[[[1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 0.0, 0.0]]]], requires_grad=True)  # (1,1,2,4)
    deeper = torch.tensor([[[[0.0, 2.0]]]], requires_grad=True)  # (1,1,1,2): ×2 bilinear -> [0, .5, 1.5, 2]
    loss = method.attention_loss([shallow, deeper])
    student = _softmax([1, 0, 0, 4, 0, 1, 0, 0])
    teacher = _softmax([0, 0.25, 2.25, 4] * 2)
    assert loss.item() == pytest.approx(sum((s - t) ** 2 for s, t in zip(student, teacher)) / 8, rel=1e-5)
    loss.backward()
    assert deeper.grad is None and shallow.grad.abs().sum() > 0  # the deeper stage is the teacher


def test_sad_three_pairs_weight_and_start_epoch(tiny_resnet):
    model = tiny_resnet(num_classes=K)
    method = create_method("sad", model, num_classes=K, start_epoch=2)
    x, y = _batch()
    with torch.no_grad():
        _, feats = model(x)
        by_hand = 0.0
        for s, d in zip(feats[:-1], feats[1:]):
            up = F.interpolate(d, scale_factor=2, mode="bilinear", align_corners=False)
            a_s = torch.softmax(s.pow(2).mean(1).flatten(1), 1)
            a_t = torch.softmax(up.pow(2).mean(1).flatten(1), 1)
            by_hand += ((a_s - a_t) ** 2).mean().item()
    method.on_epoch_start(1, 10)
    assert method(x, y).losses["sad"].item() == 0.0
    method.on_epoch_start(2, 10)
    out = method(x, y)
    assert out.losses["sad"].item() == pytest.approx(1000 * by_hand, rel=1e-4, abs=1e-5)
    assert out.losses["ce"].item() == pytest.approx(_ce(model(x)[0], y), rel=1e-5)
    assert method.extra_parameters() == 0
