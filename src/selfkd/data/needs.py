"""What a method needs from the data pipeline, declared by the method and served by the loaders.

It lives in the data layer (methods import it downwards), so the data layer knows nothing of methods.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataNeeds:
    """Batch layout a method asks for; the trainer itself knows none of this."""

    index: bool = False  # pass dataset sample indices as ``index=``
    views: int = 1  # independently augmented views of each sample, concatenated view-major
    class_partners: int = 0  # same-class partners per anchor; batch = [anchors; partners_1; ...]
    partners_in_batch: bool = False  # batch_size counts anchors + partners (BAKE), not anchors only (CS-KD)
    exclude_self: bool = False  # a partner is never its own anchor
    partners_replace: bool = True  # draw an anchor's partners with replacement
    min_batch: int = 1  # fewest primary images per process in a step (BatchNorm over the batch, pairs within it)
