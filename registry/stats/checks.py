"""Checks across a whole experiment: sample ratio mismatch and multiple-testing corrections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from scipy.stats import chi2

SRM_THRESHOLD = 0.001

Correction = Literal["holm", "benjamini-hochberg", "none"]


def srm_p_value(observed: Sequence[int], weights: Sequence[float]) -> float:
    """Chi-square goodness of fit of the units per variant against the configured weights.

    A p-value under ``SRM_THRESHOLD`` means the split is not what was configured:
    assignment or exposure logging is broken, and the results should not be trusted.
    """
    total = sum(observed)
    total_weight = sum(weights)
    if total == 0 or total_weight <= 0:
        return 1.0
    statistic = 0.0
    for count, weight in zip(observed, weights, strict=True):
        if weight <= 0:
            continue
        expected = weight / total_weight * total
        statistic += (count - expected) ** 2 / expected
    return float(chi2.sf(statistic, len(observed) - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (controls the family-wise error rate)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (controls the false discovery rate)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
    adjusted = [0.0] * m
    running = 1.0
    for position, index in enumerate(order):
        rank = m - position
        running = min(running, p_values[index] * m / rank)
        adjusted[index] = running
    return adjusted


def adjust(p_values: Sequence[float], correction: Correction) -> list[float]:
    """Adjusted p-values; one that is not a number counts as 1 (no evidence), since ranking a NaN is undefined and
    it set the adjusted p-values of unrelated metrics to 1."""
    p_values = [p if 0.0 <= p <= 1.0 else 1.0 for p in p_values]
    if correction == "holm":
        return holm(p_values)
    if correction == "benjamini-hochberg":
        return benjamini_hochberg(p_values)
    return p_values
