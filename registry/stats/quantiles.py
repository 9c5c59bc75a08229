"""Quantile metrics (p50, p95, p99 of per-unit values) from a mergeable log-bucketed histogram.

The sketch: a value ``v`` is counted in bucket ``ceil(log_gamma |v|)`` (signed, with one bucket
for values within ``ZERO`` of 0), ``gamma = (1 + ACCURACY) / (1 - ACCURACY)``, and read back as
the bucket's midpoint ``2 gamma^k / (gamma + 1)``; every value read back is within ``ACCURACY``
(0.5%) of a value counted in the same bucket (DDSketch's guarantee, Masson et al. 2019). Buckets
are fixed, so two sketches merge by adding counts and a unit moves by -1 and +1: the per-variant
rows stay a few hundred counts, whatever the number of units.

The test is gbstats' ``QuantileStatistic`` with ``n_star = n`` (the sketch answers every rank,
where GrowthBook's SQL reads a grid of ``n_star``): the estimate is the ``nu`` quantile, the bounds
are the quantiles at ``nu -+ z sqrt(nu (1 - nu) / n)`` (``z`` for 95%, as gbstats), and the per-unit
variance is ``(n - 1) ((upper - lower) / 2z)^2``; the comparisons then treat it like a mean.
Quantiles are of the nearest rank (numpy's ``inverted_cdf``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from scipy.stats import norm

ACCURACY = 0.005
GAMMA = (1 + ACCURACY) / (1 - ACCURACY)
ZERO = 1e-9  # values closer to 0 than this are counted as 0
_LOG_GAMMA = math.log(GAMMA)
_OFFSET = 100_000  # keeps the buckets of positive values, negative values and 0 apart
_Z = float(norm.ppf(0.975))
# Magnitudes beyond this share the last bucket: a bucket above it would read back as more than the largest float
# (infinite, or OverflowError), and an infinite value (a sum that overflowed) would have no bucket at all.
LARGEST = 1e300


def bucket_of(value: float) -> int:
    """The histogram bucket that counts ``value``."""
    magnitude = abs(value)
    if magnitude <= ZERO:
        return 0
    if not magnitude <= LARGEST:  # NaN too
        magnitude = LARGEST
    key = math.ceil(math.log(magnitude) / _LOG_GAMMA) + _OFFSET
    return -key if value < 0 else key


def value_of(bucket: int) -> float:
    """What a bucket reads back as: within ``ACCURACY`` of every value it counts."""
    if bucket == 0:
        return 0.0
    magnitude = 2 * GAMMA ** (abs(bucket) - _OFFSET) / (GAMMA + 1)
    return magnitude if bucket > 0 else -magnitude


def quantile_of(counts: Mapping[int, int], nu: float) -> float:
    """The nearest-rank ``nu`` quantile of the counted values (``nu`` is clipped to [0, 1])."""
    n = sum(counts.values())
    if n <= 0:
        return 0.0
    rank = max(1, math.ceil(min(max(nu, 0.0), 1.0) * n))
    seen = 0
    ordered = sorted((value_of(b), c) for b, c in counts.items() if c > 0)
    for value, count in ordered:
        seen += count
        if seen >= rank:
            return value
    return ordered[-1][0]


@dataclass(frozen=True, slots=True)
class QuantileMoments:
    """gbstats ``QuantileStatistic``: the ``nu`` quantile of ``n`` values and its 95% bounds."""

    n: int
    n_star: int
    nu: float
    quantile_hat: float
    quantile_lower: float
    quantile_upper: float
    binomial: bool = False

    @classmethod
    def of_histogram(cls, counts: Mapping[int, int], nu: float) -> QuantileMoments:
        n = sum(counts.values())
        spread = _Z * math.sqrt(nu * (1 - nu) / n) if n else 0.0
        return cls(
            n,
            n,
            nu,
            quantile_of(counts, nu),
            quantile_of(counts, nu - spread),
            quantile_of(counts, nu + spread),
        )

    @property
    def mean(self) -> float:
        return self.quantile_hat

    @property
    def variance_init(self) -> float:
        if self.n <= 1:
            return 0.0
        return (self.n_star / self.n) * (self.n - 1) * ((self.quantile_upper - self.quantile_lower) / (2 * _Z)) ** 2

    @property
    def has_zero_variance(self) -> bool:
        """Too few values for bounds inside (0, 1), or bounds the data cannot tell apart (gbstats)."""
        too_few = self.n <= _Z**2 * self.nu / (1 - self.nu) or self.n <= _Z**2 * (1 - self.nu) / self.nu
        return too_few or self.variance_init <= 0

    @property
    def variance(self) -> float:
        if self.has_zero_variance:
            return 0.0
        return self.variance_init if self.n < 100 else max(self.variance_init, 1e-5)

    @property
    def std_dev(self) -> float:
        return math.sqrt(self.variance)
