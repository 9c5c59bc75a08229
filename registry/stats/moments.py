"""Sufficient statistics of per-unit values, and what follows from them alone.

A variant's metric is summarized by ``n``, the sum and the sum of squares of
its per-unit values (plus, for CUPED, the covariate's sums and the sum of
cross-products). Every result is computed from these few numbers, so its cost
does not grow with the number of units. The definitions follow GrowthBook's
stats engine (gbstats ``SampleMeanStatistic``, ``ProportionStatistic``,
``RegressionAdjustedStatistic``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from scipy.stats import norm
from scipy.stats import t as student_t


@dataclass(frozen=True, slots=True)
class Moments:
    """``n`` per-unit values by their sum and sum of squares.

    Binomial values (0 or 1) use the proportion variance ``p(1-p)``, as
    GrowthBook does; continuous values use the sample variance (``n - 1``).
    """

    n: int
    sum: float
    sum_squares: float
    binomial: bool = False

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        if self.binomial:
            p = self.mean
            return p * (1 - p)
        if self.n <= 1:
            return 0.0
        return max((self.sum_squares - self.sum * self.sum / self.n) / (self.n - 1), 0.0)

    @property
    def std_dev(self) -> float:
        return math.sqrt(self.variance)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares, self.binomial)


def covariance(n: int, post: Moments, pre: Moments, cross_sum: float) -> float:
    """Covariance of post and pre values from their sums (gbstats ``compute_covariance``)."""
    if n <= 1:
        return 0.0
    if post.binomial and pre.binomial:
        return cross_sum / n - post.sum * pre.sum / n**2
    return (cross_sum - post.sum * pre.sum / n) / (n - 1)


class Summary(Protocol):
    """What a comparison reads of a variant: per-unit ``n``, mean and variance (``Moments``, ``RatioMoments``,
    ``QuantileMoments``)."""

    @property
    def n(self) -> int: ...

    @property
    def mean(self) -> float: ...

    @property
    def variance(self) -> float: ...

    @property
    def std_dev(self) -> float: ...

    @property
    def binomial(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Covariate:
    """CUPED: the same units' pre-exposure values, and the sum of post * pre products."""

    pre: Moments
    cross_sum: float


@dataclass(frozen=True, slots=True)
class Arm:
    """One variant's data for one metric; a covariate (CUPED) only with ``Moments``."""

    post: Summary
    covariate: Covariate | None = None

    @property
    def n(self) -> int:
        return self.post.n


@dataclass(frozen=True, slots=True)
class Interval:
    mean: float
    std_dev: float
    ci_low: float
    ci_high: float


def mean_interval(moments: Summary, alpha: float = 0.05) -> Interval:
    """The mean with its t interval (``n - 1`` degrees of freedom), as ``scipy.stats.t.interval`` gives.

    A proportion gets its Wilson score interval instead: the t interval leaves [0, 1] at small ``n``
    (2 of 3 units gave [-0.50, 1.84]) and has no width at 0 or 1. Only this per-variant interval
    changes; the comparisons between variants keep GrowthBook's statistics.
    """
    mean, std_dev = moments.mean, moments.std_dev
    if moments.binomial and moments.n > 0:
        low, high = wilson_interval(mean, moments.n, alpha)
        return Interval(mean, std_dev, low, high)
    if moments.n <= 1 or std_dev == 0:
        return Interval(mean, std_dev, mean, mean)
    halfwidth = float(student_t.ppf(1 - alpha / 2, moments.n - 1)) * std_dev / math.sqrt(moments.n)
    return Interval(mean, std_dev, mean - halfwidth, mean + halfwidth)


def wilson_interval(proportion: float, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson's score interval for a proportion of ``n`` units: always within [0, 1], never empty."""
    z = float(norm.ppf(1 - alpha / 2))
    z2_n = z * z / n
    center = (proportion + z2_n / 2) / (1 + z2_n)
    halfwidth = z / (1 + z2_n) * math.sqrt(proportion * (1 - proportion) / n + z2_n / (4 * n))
    # At 0 (or 1) the bound is exactly 0 (1), but rounding left it a hair inside (2.8e-17 for 0 of 12), so the
    # interval no longer held its own proportion.
    low = 0.0 if proportion <= 0 else max(center - halfwidth, 0.0)
    high = 1.0 if proportion >= 1 else min(center + halfwidth, 1.0)
    return low, high
