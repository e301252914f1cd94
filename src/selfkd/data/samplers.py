"""Batch samplers: each yields one LongTensor of dataset indices per training step.

All of them are deterministic functions of ``(seed, epoch)``, so resuming at any step needs no
saved state, and all of them shard by rank: the global batch (``batch_size`` images in total,
as papers state it) is drawn identically on every rank and rank ``r`` keeps ``batch[r::world]``.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def _generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_009 + salt) % (2**63))


class Batches:
    """Shuffled pass over ``n`` samples in global batches of ``batch_size`` (the last one smaller).

    ``min_batch``: the fewest samples a process may get in a step (a method that normalises or pairs over the
    batch cannot train on one). A last batch that would give a process fewer is dropped (``dropped`` samples per
    epoch, a different random few each epoch); a ``batch_size`` that would is refused.
    """

    what = "images"  # what batch_size counts, for messages

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True,
                 min_batch: int = 1):
        if batch_size % world:
            raise ConfigError(f"A global batch of {batch_size} {self.what} cannot be split evenly over {world} "
                              f"processes; choose data.batch_size so that the {self.what} per step are a multiple "
                              f"of {world}.")
        if batch_size // world < min_batch:
            raise ConfigError(f"The method needs at least {min_batch} {self.what} per process in a training step (it "
                              f"normalises or pairs over the batch), but a global batch of {batch_size} over {world} "
                              f"process(es) gives {batch_size // world}. Raise data.batch_size.")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.shuffle = shuffle
        self.epoch = 0
        last = n % batch_size
        self.dropped = last if last and math.ceil(last / world) < min_batch else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil((self.n - self.dropped) / self.batch_size)

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.n, generator=_generator(self.seed, self.epoch))
        return torch.arange(self.n)

    def _global_batches(self):
        order = self._order()
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]

    def iter_from(self, step: int = 0):
        for i, batch in enumerate(self._global_batches()):
            if i >= step:
                yield self._shard(batch)

    def __iter__(self):
        return self.iter_from(0)

    def _shard(self, batch: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return batch
        if len(batch) % self.world:  # pad the last batch by repeating it, as DistributedSampler does
            pad = self.world - len(batch) % self.world
            batch = torch.cat([batch, batch.repeat(math.ceil(pad / len(batch)))[:pad]])
        return batch[self.rank::self.world]


class ClassPartnerBatches(Batches):
    """Anchors in a shuffled pass, each followed (block-wise) by ``partners`` same-class samples.

    Layout of one batch: ``[anchors; partners_1; ...; partners_m]``. CS-KD: one partner drawn
    uniformly from the anchor's class (possibly itself). BAKE: ``m`` partners drawn without
    replacement from the class minus the anchor (with replacement only when the class is too small).
    Sharding keeps every anchor's group on one rank.
    """

    what = "anchors"

    def __init__(self, labels: torch.Tensor, anchors_per_batch: int, partners: int, seed: int = 0,
                 rank: int = 0, world: int = 1, exclude_self: bool = False, replace: bool = True, min_batch: int = 1):
        if anchors_per_batch < 1:
            raise ConfigError(f"The batch holds no anchor: each anchor comes with {partners} same-class partner(s) in "
                              f"data.batch_size, so it must be at least {partners + 1}.")
        super().__init__(len(labels), anchors_per_batch, seed, rank, world, min_batch=min_batch)
        self.partners, self.exclude_self, self.replace = partners, exclude_self, replace
        labels = labels.cpu().long()
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        self.class_start = torch.cumsum(counts, 0) - counts
        self.class_count = counts
        self.sorted_index = order
        self.labels = labels
        self.rank_in_class = torch.empty_like(labels)
        self.rank_in_class[order] = torch.arange(len(labels)) - self.class_start[labels[order]]

    def _partners_for(self, anchors: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """(m, len(anchors)) partner indices."""
        y = self.labels[anchors]
        count, start = self.class_count[y], self.class_start[y]
        m = self.partners
        if self.replace and not self.exclude_self:
            offsets = (torch.rand(m, len(anchors), generator=gen) * count).long()
            return self.sorted_index[start + offsets]
        # Without the anchor: rank of the anchor inside its class, then draw among the other count-1.
        anchor_pos = self.rank_in_class[anchors]
        others = (count - 1).clamp(min=1)
        if self.replace:
            offsets = (torch.rand(m, len(anchors), generator=gen) * others).long()
        else:
            offsets = self._distinct(others, m, gen)
        offsets = offsets + (offsets >= anchor_pos).long() * (count > 1).long()
        return self.sorted_index[start + offsets]

    @staticmethod
    def _distinct(others: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
        """(m, n) offsets, distinct per column, uniform over ``0..others−1`` (with repeats only when
        ``others < m``). The k-th draw picks among the values not yet taken by shifting past them."""
        n = len(others)
        taken = torch.empty(0, n, dtype=torch.long)
        for k in range(m):
            r = (torch.rand(n, generator=gen) * (others - k).clamp(min=1)).long()
            for v in taken.sort(dim=0).values:  # ascending: each taken value at or below r pushes r up
                r = r + (r >= v).long()
            too_small = others - k <= 0  # fewer same-class samples than partners: repeat some
            r = torch.where(too_small, (torch.rand(n, generator=gen) * others).long(), r)
            taken = torch.cat([taken, r[None]])
        return taken

    def iter_from(self, step: int = 0):
        gen = _generator(self.seed, self.epoch, salt=1)
        for i, anchors in enumerate(self._global_batches()):
            partners = self._partners_for(anchors, gen)  # always drawn, so skipping keeps the stream
            if i < step:
                continue
            keep = self._shard(torch.arange(len(anchors)))  # each anchor's partners stay on its rank
            anchors, partners = anchors[keep], partners[:, keep]
            yield torch.cat([anchors, partners.reshape(-1)])


class ShardedSequential(Batches):
    """Evaluation order: rank ``r`` takes samples ``r, r+world, ...`` in batches of ``batch_size``, no padding, no
    shuffle. A rank takes only the steps that give it samples (the global batches ``i`` with ``i·B + r < n``): when
    fewer samples than ranks are left for the last step, the ranks without one stop a step earlier (evaluation has
    no per-batch collective)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        super().__init__(n, batch_size * world, 0, rank, world, shuffle=False)

    def __len__(self) -> int:
        return math.ceil(max(self.n - self.rank, 0) / self.batch_size)

    def _shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch[self.rank::self.world]
