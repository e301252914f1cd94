"""The 95 % interval of a method's gain over ``ce``, so that a gain smaller than its seed-to-seed noise reads as such.

Paired by seed when both groups ran the same seeds (each seed's runs share the initialisation of the data order
and subset): a t-interval on the per-seed differences ``d_i = x_i − c_i``,
``d̄ ± t_{0.975, n−1} · s_d / √n``. Otherwise Welch's interval on the two means:
``x̄ − c̄ ± t_{0.975, ν} · √(s_x²/n_x + s_c²/n_c)`` with
``ν = (s_x²/n_x + s_c²/n_c)² / ((s_x²/n_x)²/(n_x−1) + (s_c²/n_c)²/(n_c−1))`` (Welch–Satterthwaite).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    gain: float  # the point estimate: mean difference (paired) or difference of the means (Welch)
    low: float
    high: float
    df: float  # degrees of freedom of the t quantile
    kind: str  # "paired" or "welch"

    @property
    def within_noise(self) -> bool:
        """The interval contains 0: the data cannot tell the gain from seed-to-seed noise."""
        return self.low <= 0.0 <= self.high

    def text(self) -> str:
        """``+0.42 [-0.31, +1.15]``."""
        return f"{self.gain:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def _t_interval(centre: float, se: float, df: float, kind: str) -> Interval:
    half = student_t.ppf(0.5 + LEVEL / 2, df) * se if se > 0 else 0.0
    return Interval(centre, centre - half, centre + half, df, kind)


def paired_interval(method: dict, baseline: dict) -> Interval | None:
    """``method`` and ``baseline`` map seed → value over the same seeds (at least two); None otherwise."""
    if set(method) != set(baseline) or len(method) < 2:
        return None
    diffs = [method[s] - baseline[s] for s in method]
    n = len(diffs)
    return _t_interval(statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(n), n - 1, "paired")


def welch_interval(method: list[float], baseline: list[float]) -> Interval | None:
    """Welch's interval of ``mean(method) − mean(baseline)``; None unless both have at least two values."""
    if len(method) < 2 or len(baseline) < 2:
        return None
    vx, vc = statistics.variance(method) / len(method), statistics.variance(baseline) / len(baseline)
    se2 = vx + vc
    pooled_df = len(method) + len(baseline) - 2
    df = se2**2 / (vx**2 / (len(method) - 1) + vc**2 / (len(baseline) - 1)) if se2 > 0 else pooled_df
    return _t_interval(statistics.fmean(method) - statistics.fmean(baseline), math.sqrt(se2), df, "welch")


def gain_interval(method: list[tuple], baseline: list[tuple]) -> Interval | None:
    """The interval of the gain from ``(seed, value)`` pairs: paired when both sides ran the same seeds, once each;
    Welch's otherwise. None with fewer than two values on a side."""
    seeds = [s for s, _ in method]
    if len(set(seeds)) == len(seeds) == len(baseline) and set(seeds) == {s for s, _ in baseline}:
        return paired_interval(dict(method), dict(baseline))
    return welch_interval([v for _, v in method], [v for _, v in baseline])
