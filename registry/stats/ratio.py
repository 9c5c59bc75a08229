"""Ratio metrics: a numerator and a denominator summed per unit, compared as the ratio of their means.

gbstats ``RatioStatistic``: per variant ``n`` units, the sums and sums of squares of the
numerators and of the denominators, and the sum of their products. The ratio's per-unit
variance comes from the delta method (``variance_of_ratios``), so ``variance / n`` is the
variance of the ratio of means; the comparisons then treat it like any mean (Welch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from registry.stats.moments import Moments, covariance


def variance_of_ratios(mean_m: float, var_m: float, mean_d: float, var_d: float, cov: float) -> float:
    """Delta-method variance of ``m / d`` at the means (gbstats ``variance_of_ratios``)."""
    return var_m / mean_d**2 + var_d * mean_m**2 / mean_d**4 - 2 * cov * mean_m / mean_d**3


@dataclass(frozen=True, slots=True)
class RatioMoments:
    """``n`` units' numerators and denominators by their sums, and the sum of numerator * denominator."""

    n: int
    numerator: Moments
    denominator: Moments
    cross_sum: float
    binomial: bool = False

    @classmethod
    def of_sums(
        cls, n: int, sum_m: float, squares_m: float, sum_d: float, squares_d: float, cross_sum: float
    ) -> RatioMoments:
        return cls(n, Moments(n, sum_m, squares_m), Moments(n, sum_d, squares_d), cross_sum)

    @property
    def mean(self) -> float:
        return self.numerator.sum / self.denominator.sum if self.denominator.sum else 0.0

    @property
    def variance(self) -> float:
        if self.denominator.mean == 0 or self.n <= 1:
            return 0.0
        # The components' sample variances as gbstats takes them: unclamped, like the covariance.
        m, d, n = self.numerator, self.denominator, self.n
        var_m = (m.sum_squares - m.sum**2 / n) / (n - 1)
        var_d = (d.sum_squares - d.sum**2 / n) / (n - 1)
        cov = covariance(n, m, d, self.cross_sum)
        try:
            return variance_of_ratios(m.mean, var_m, d.mean, var_d, cov)
        except ZeroDivisionError:  # denominators so close to 0 that their mean's powers underflow: nothing to say
            return 0.0

    @property
    def std_dev(self) -> float:
        # Rounding leaves a constant ratio's variance a hair below 0 (the comparison refuses it as no variance).
        return math.sqrt(max(self.variance, 0.0))
