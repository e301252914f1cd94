"""Batched augmentation and batch samplers."""
import pytest
import torch

from selfkd.data import augment as aug
from selfkd.data.samplers import Batches, ClassPartnerBatches


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_crop_matches_padded_slice_per_sample():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    gen = _gen(1)
    out = aug.random_crop_flip(x, padding=2, flip=False, gen=gen)
    gen = _gen(1)
    oy = torch.randint(0, 5, (6, 1), generator=gen)
    ox = torch.randint(0, 5, (6, 1), generator=gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(6):
        y0, x0 = int(oy[b]), int(ox[b])
        assert torch.equal(out[b], padded[b, :, y0:y0 + 8, x0:x0 + 8])
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_flip_mirrors_about_half_the_samples():
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(200, 1, 1, 1)
    out = aug.random_crop_flip(x, padding=0, flip=True, gen=_gen(0))
    flipped = torch.tensor([torch.equal(o, x[0].flip(-1)) for o in out])
    same = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert bool((flipped | same).all())
    assert 60 < int(flipped.sum()) < 140


def test_random_resized_crop_shape_range_and_determinism():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    a = aug.random_resized_crop_flip(x, 24, (0.08, 1.0), True, _gen(3))
    b = aug.random_resized_crop_flip(x, 24, (0.08, 1.0), True, _gen(3))
    assert a.shape == (5, 3, 24, 24) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 255
    # scale (1, 1) with ratio (1, 1) is the whole image, resampled to the same size: identity.
    full = aug.random_resized_crop_flip(x.float(), 32, (1.0, 1.0), False, _gen(0), ratio=(1.0, 1.0))
    assert torch.allclose(full, x.float(), atol=1e-3)


def test_random_resized_crop_averages_when_shrinking():
    """A 1-pixel checkerboard shrunk 3× must come out near uniform grey (as torchvision's antialiased resize),
    not as the aliased 0/255 pattern that plain bilinear sampling at pixel centres gives."""
    board = ((torch.arange(48)[:, None] + torch.arange(48)[None]) % 2 * 255).to(torch.uint8)
    x = board.expand(2, 3, 48, 48).contiguous()
    out = aug.random_resized_crop_flip(x, 16, (1.0, 1.0), False, _gen(0), ratio=(1.0, 1.0))
    assert out.mean().item() == pytest.approx(127.5, abs=5) and out.std().item() < 20


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_normalize_in_the_models_layout(layout):
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = aug.normalize(x, torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25]), layout)
    assert torch.allclose(out, torch.full_like(out, 2.0))
    assert out.is_contiguous(memory_format=layout)


def test_batches_cover_epoch_and_change_with_epoch():
    s = Batches(10, 4, seed=0)
    batches = list(s)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    s.set_epoch(1)
    assert not torch.equal(torch.cat(list(s)), torch.cat(batches))
    s.set_epoch(0)
    assert torch.equal(torch.cat(list(s.iter_from(1))), torch.cat(batches[1:]))


def test_batches_shard_global_batch_across_ranks():
    full = list(Batches(16, 8, seed=5))
    r0 = list(Batches(16, 8, seed=5, rank=0, world=2))
    r1 = list(Batches(16, 8, seed=5, rank=1, world=2))
    assert len(full) == len(r0) == len(r1) == 2
    for g, a, b in zip(full, r0, r1):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(g.tolist())


def test_class_partner_batches_same_class_and_layout():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    s = ClassPartnerBatches(labels, anchors_per_batch=4, partners=1, seed=0)
    for batch in s:
        a, p = batch.chunk(2)
        assert torch.equal(labels[a], labels[p])
    assert len(s) == 3


def test_class_partner_batches_shard_with_each_anchor_keeping_its_partners():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    full = list(ClassPartnerBatches(labels, anchors_per_batch=6, partners=2, seed=3))
    ranks = [list(ClassPartnerBatches(labels, anchors_per_batch=6, partners=2, seed=3, rank=r, world=2))
             for r in range(2)]
    assert len(full) == len(ranks[0]) == len(ranks[1]) == 2
    for step, batch in enumerate(full):
        groups = batch.view(3, 6).t()  # one row per anchor: [anchor, partner_1, partner_2]
        for r in range(2):
            local = ranks[r][step].view(3, 3).t()
            assert torch.equal(local, groups[r::2])  # rank r holds anchors r, r+2, ... with their own partners


def test_class_partners_without_replacement_exclude_anchor():
    labels = torch.tensor([0] * 5 + [1] * 5)
    s = ClassPartnerBatches(labels, anchors_per_batch=10, partners=3, seed=1, exclude_self=True, replace=False)
    (batch,) = list(s)
    anchors, partners = batch[:10], batch[10:].view(3, 10)
    for j in range(10):
        group = partners[:, j].tolist()
        assert anchors[j].item() not in group
        assert len(set(group)) == 3
        assert all(labels[g] == labels[anchors[j]] for g in group)


def test_distinct_partner_draws_are_uniform():
    gen = torch.Generator().manual_seed(0)
    others = torch.full((20000,), 5)
    draws = ClassPartnerBatches._distinct(others, 3, gen)
    assert bool((draws[0] != draws[1]).all() & (draws[1] != draws[2]).all() & (draws[0] != draws[2]).all())
    freq = torch.bincount(draws.flatten(), minlength=5).float() / 20000
    assert torch.allclose(freq, torch.full((5,), 3 / 5), atol=0.02)  # each value is in 3 of 5 draws
    # A class with fewer samples than partners repeats some instead of failing.
    small = ClassPartnerBatches._distinct(torch.tensor([2]), 3, gen)
    assert set(small.flatten().tolist()) <= {0, 1}
