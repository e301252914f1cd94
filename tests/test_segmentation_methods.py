"""Segmentation methods: pixel CE/KD/AT against hand computations, the ramp, what is detached, inference."""
import math

import pytest
import torch

import hand
from selfkd.errors import ConfigError
from selfkd.losses import pixel_cross_entropy, pixel_kd_loss
from selfkd.methods import METHODS, Method, create_method, method_class, register_method
from selfkd.methods.segmentation import SegmentationCE, SegmentationFRSKD, distillation_ramp
from selfkd.models import create_model
from selfkd.models.segmentation import Encoder, FRSKDSegmenter, cbr
from selfkd.registry import Registry


def pixel_rows(logits):
    """(B, K, H, W) -> list of per-pixel logit rows, in (b, h, w) order."""
    return logits.detach().permute(0, 2, 3, 1).reshape(-1, logits.shape[1]).tolist()


def hand_at(student, teacher):
    """Σ_levels mean over batch and positions of (at(s) − at(t))², at = L2-normalised channel mean of f²."""
    def at(f):
        maps = []
        for sample in f.tolist():
            channels, positions = len(sample), len(sample[0]) * len(sample[0][0])
            a = [sum(sample[c][p // len(sample[0][0])][p % len(sample[0][0])] ** 2 for c in range(channels)) / channels
                 for p in range(positions)]
            norm = math.sqrt(sum(v * v for v in a))
            maps.append([v / norm for v in a])
        return maps

    total = 0.0
    for s, t in zip(student, teacher):
        a, b = at(s.detach()), at(t.detach())
        diffs = [(x - y) ** 2 for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
        total += sum(diffs) / len(diffs)
    return total


def test_pixel_ce_and_kd_match_hand_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 2, 3), torch.randn(2, 3, 2, 3)
    targets = torch.tensor([[[0, 1, 255], [2, 2, 0]], [[255, 255, 1], [0, 2, 1]]])
    labelled = [i for i, y in enumerate(targets.flatten().tolist()) if y != 255]
    rows_s, rows_t, ys = pixel_rows(student), pixel_rows(teacher), targets.flatten().tolist()
    assert pixel_cross_entropy(student, targets, 255).item() == pytest.approx(
        hand.ce([rows_s[i] for i in labelled], [ys[i] for i in labelled]), rel=1e-5)
    assert pixel_kd_loss(teacher, student, 2.0).item() == pytest.approx(hand.kd(rows_t, rows_s, 2.0), rel=1e-5)
    masked = pixel_kd_loss(teacher, student, 2.0, mask=targets != 255).item()
    assert masked == pytest.approx(hand.kd([rows_t[i] for i in labelled], [rows_s[i] for i in labelled], 2.0), rel=1e-5)
    assert pixel_cross_entropy(student, torch.full_like(targets, 255), 255).item() == 0.0  # no labelled pixel: 0, not NaN


def test_ramp_is_zero_during_warmup_then_rises_to_one_at_the_last_epoch():
    # t = (epoch + 1 − 40) / 20, weight exp(−5(1 − t)²)
    expected = {0: 0.0, 39: 0.0, 40: math.exp(-5 * 0.95**2), 50: math.exp(-5 * 0.45**2), 59: 1.0}
    for epoch, value in expected.items():
        assert distillation_ramp(epoch, 60, 40, None) == pytest.approx(value, abs=1e-12)
        assert distillation_ramp(epoch, 60, 40, 20) == pytest.approx(value, abs=1e-12)
    assert distillation_ramp(40, 60, 40, 0) == 1.0  # ramp_epochs=0: full strength after the warm-up
    assert distillation_ramp(0, 10, 0, None) == pytest.approx(math.exp(-5 * 0.9**2))
    assert distillation_ramp(9, 10, 0, 5) == 1.0


def tiny_segmenter(num_classes: int = 3) -> FRSKDSegmenter:
    """The FRSKD segmenter on a four-stage toy encoder (strides 4/8/16/32), pyramid width 8, head width 16."""
    torch.manual_seed(0)
    encoder = Encoder([cbr(3, 4, 3, stride=4), cbr(4, 8, 3, stride=2), cbr(8, 8, 3, stride=2), cbr(8, 16, 3, stride=2)],
                      [4, 8, 8, 16])
    return FRSKDSegmenter(encoder, num_classes, channels=8, head_channels=16)


@pytest.fixture
def frskd():
    def make(**options):
        return create_method("frskd", tiny_segmenter(), **options)

    return make


def batch():
    """Blocky images (8×8-pixel cells) whose class is the cell's sign pattern, some pixels unlabelled."""
    gen = torch.Generator().manual_seed(1)
    cells = torch.randn(2, 3, 4, 4, generator=gen)
    images = cells.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    targets = (images[:, 0] > 0).long() + (images[:, 1] > 0).long()
    targets[0, :5] = 255
    return images, targets


def test_method_is_registered_for_segmentation_and_picked_by_the_model_task(frskd):
    assert method_class("frskd", "segmentation") is SegmentationFRSKD
    assert method_class("ce", "segmentation") is SegmentationCE
    method = frskd()
    assert isinstance(method, SegmentationFRSKD) and method.task == "segmentation"
    assert (method.alpha, method.beta, method.temperature, method.warmup_epochs) == (1.0, 50.0, 1.0, 40)


def test_a_method_takes_its_task_from_its_registration(monkeypatch):
    monkeypatch.setitem(METHODS, "segmentation", Registry("method", "segmentation"))  # leave the real one alone

    @register_method("pixel_ce", task="segmentation")
    class PixelCE(Method):
        task = "classification"  # a stale class attribute: the registration wins

    assert PixelCE.task == "segmentation" and method_class("pixel_ce", "segmentation") is PixelCE
    assert Method.task == "classification"  # the base class keeps its default


@pytest.mark.parametrize("kd_mask", [False, True])
def test_frskd_terms_match_hand_computation(frskd, kd_mask):
    method = frskd(alpha=2.0, beta=3.0, kd_mask=kd_mask)
    method.on_epoch_start(59, 60)  # full strength
    images, targets = batch()
    out = method(images, targets)
    with torch.no_grad():  # the same forward again (train-mode BN, no randomness): the student and teacher outputs
        out1, s1 = method.backbone(images)
        s2 = method.teacher(s1)
        out2 = method.teacher_head(s2[0], images.shape[-2:])
    torch.testing.assert_close(out.logits, out1)
    ys = targets.flatten().tolist()
    keep = [i for i, y in enumerate(ys) if y != 255]
    rows1, rows2 = pixel_rows(out1), pixel_rows(out2)
    assert out.losses["ce"].item() == pytest.approx(hand.ce([rows1[i] for i in keep], [ys[i] for i in keep]), rel=1e-4)
    assert out.losses["ce_teacher"].item() == pytest.approx(
        hand.ce([rows2[i] for i in keep], [ys[i] for i in keep]), rel=1e-4)
    kd_rows = keep if kd_mask else range(len(ys))
    assert out.losses["kd"].item() == pytest.approx(
        2.0 * hand.kd([rows2[i] for i in kd_rows], [rows1[i] for i in kd_rows], 1.0), rel=1e-4)
    assert out.losses["at"].item() == pytest.approx(3.0 * hand_at(s1, s2), rel=1e-4)


def test_warmup_leaves_only_the_two_cross_entropies(frskd):
    method = frskd()
    method.on_epoch_start(0, 60)
    out = method(*batch())
    assert out.losses["kd"].item() == 0.0 and out.losses["at"].item() == 0.0
    assert out.loss.item() == pytest.approx(out.losses["ce"].item() + out.losses["ce_teacher"].item())
    with pytest.warns(UserWarning, match="never start"):
        method.on_epoch_start(0, 30)


def test_distillation_targets_are_detached_and_teacher_ce_trains_the_segmenter(frskd):
    method = frskd()
    method.on_epoch_start(59, 60)
    out = method(*batch())
    segmenter = method.backbone
    teacher = list(method.teacher.parameters()) + list(method.teacher_head.parameters())
    bifpn, head = list(segmenter.bifpn.parameters()), list(segmenter.head.parameters())
    # KD and AT pull the student towards the teacher, never the teacher towards the student
    assert hand.all_none(hand.grads(out.losses["kd"], teacher))
    assert hand.all_none(hand.grads(out.losses["at"], teacher))
    assert not hand.all_none(hand.grads(out.losses["kd"], head))
    assert not hand.all_none(hand.grads(out.losses["at"], bifpn))
    # the teacher's CE reaches the segmenter's BiFPN and encoder through the non-detached pyramid, not its head
    teacher_ce = hand.grads(out.losses["ce_teacher"], [segmenter.encoder.stages[0][0].weight] + bifpn + head)
    assert not hand.all_none(teacher_ce[:1]) and not hand.all_none(teacher_ce[1:1 + len(bifpn)])
    assert hand.all_none(teacher_ce[1 + len(bifpn):])
    assert not hand.all_none(hand.grads(out.losses["ce_teacher"], teacher))


def test_inference_and_export_use_the_segmenter_alone(frskd):
    method = frskd().eval()
    images, _ = batch()
    assert method.eval_model() is method.backbone
    torch.testing.assert_close(method(images), method.backbone(images)[0])


def test_ce_method_trains_the_segmenter_logits_only():
    method = create_method("ce", tiny_segmenter())
    assert isinstance(method, SegmentationCE) and method.extra_parameters() == 0
    images, targets = batch()
    out = method(images, targets)
    keep = [i for i, y in enumerate(targets.flatten().tolist()) if y != 255]
    rows = pixel_rows(out.logits)
    assert out.loss.item() == pytest.approx(
        hand.ce([rows[i] for i in keep], [targets.flatten().tolist()[i] for i in keep]), rel=1e-4)
    assert list(out.losses) == ["ce"]


def test_frskd_refuses_a_segmenter_without_pyramid():
    model = create_model("lraspp_mobilenet_v3_large", num_classes=3)
    with pytest.raises(ConfigError, match="frskd_seg_effb0"):
        create_method("frskd", model)


def test_frskd_learns_a_fixed_batch(frskd):
    method = frskd()
    method.on_epoch_start(59, 60)
    images, targets = batch()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        out = method(images, targets)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append({"total": out.loss.item(), **{k: v.item() for k, v in out.losses.items()}})
    assert losses[-1]["total"] < 0.6 * losses[0]["total"]
    assert losses[-1]["ce"] < 0.75 * losses[0]["ce"] and losses[-1]["ce_teacher"] < 0.75 * losses[0]["ce_teacher"]


def test_training_forward_is_one_graph_across_epochs(frskd):
    """Per-epoch weights live in a checkpointed buffer: the traced step has no graph break and is not retraced
    when the ramp changes (Dynamo's "eager" backend: traced, nothing compiled)."""
    from torch._dynamo.utils import counters

    method = frskd(warmup_epochs=1, ramp_epochs=2)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(method, backend="eager", fullgraph=True)
    images, targets = batch()
    kd = []
    for epoch in range(3):
        method.on_epoch_start(epoch, 3)
        kd.append(compiled(images, targets).losses["kd"].item())
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()
    assert kd[0] == 0.0 and 0.0 < kd[1] < kd[2]
    assert torch.equal(method.state_dict()["ramp"], torch.tensor(1.0))
