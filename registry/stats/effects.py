"""A treatment against the control: differences, intervals, p-values, chance to win.

The formulas are GrowthBook's (gbstats ``EffectMoments``, ``TwoSidedTTest``,
``SequentialTwoSidedTTest``, ``EffectBayesianABTest`` with a flat prior):

- absolute difference of means with Welch's t-test: the same statistic,
  degrees of freedom, p-value and interval as ``scipy.stats.ttest_ind(...,
  equal_var=False)``;
- relative difference ``(mean_b - mean_a) / |mean_a|`` with the delta-method
  standard error, and a t interval on Welch's degrees of freedom;
- chance to beat the control: the normal approximation of the relative effect
  under a flat prior, flipped for metrics where lower is better;
- optional always-valid (sequential) intervals and p-values from the mixture
  sequential probability ratio test of Waudby-Smith et al. (2023), tuned by the
  expected total sample size, so analysts may look every day;
- optional CUPED: both arms adjusted by ``theta = cov(post, pre) / var(pre)``
  pooled over the two arms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm
from scipy.stats import t as student_t

from registry.stats.moments import Arm, Moments, covariance

DEFAULT_SEQUENTIAL_TUNING = 5000.0


@dataclass(frozen=True, slots=True)
class Estimate:
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    p_value: float


@dataclass(frozen=True, slots=True)
class Comparison:
    absolute: Estimate
    relative: Estimate | None  # None when the control's mean is 0
    dof: float
    chance_to_win: float
    sequential_absolute: Estimate | None = None
    sequential_relative: Estimate | None = None
    cuped_theta: float | None = None  # set when CUPED adjusted the arms


class NotEnoughDataError(ValueError):
    """A comparison needs at least two units per arm and some variance."""


@dataclass(frozen=True, slots=True)
class _Adjusted:
    """An arm's mean and variance after the (optional) CUPED adjustment."""

    n: int
    mean: float
    variance: float
    unadjusted_mean: float


def _moments(arm: Arm) -> Moments:
    """An arm's sums: CUPED adjusts means of per-unit values only (not ratios or quantiles)."""
    if not isinstance(arm.post, Moments):
        raise TypeError("CUPED needs the per-unit values' sums")
    return arm.post


def _theta(control: Arm, treatment: Arm) -> float:
    """gbstats ``compute_theta``: the regression slope of post on pre, both arms pooled."""
    assert control.covariate is not None
    assert treatment.covariate is not None
    n = control.n + treatment.n
    post = _moments(control) + _moments(treatment)
    pre = control.covariate.pre + treatment.covariate.pre
    joint_post = Moments(n, post.sum, post.sum_squares, control.post.binomial)
    joint_pre = Moments(n, pre.sum, pre.sum_squares, control.covariate.pre.binomial)
    if joint_pre.variance == 0 or joint_post.variance == 0:
        return 0.0
    cross = control.covariate.cross_sum + treatment.covariate.cross_sum
    return covariance(n, joint_post, joint_pre, cross) / joint_pre.variance


def _adjust(arm: Arm, theta: float) -> _Adjusted:
    if arm.covariate is None or theta == 0:
        summary = arm.post
        return _Adjusted(summary.n, summary.mean, summary.variance, summary.mean)
    post = _moments(arm)
    pre = arm.covariate.pre
    cov = covariance(arm.n, post, pre, arm.covariate.cross_sum)
    variance = post.variance + theta**2 * pre.variance - 2 * theta * cov if arm.n > 1 else 0.0
    return _Adjusted(post.n, post.mean - theta * pre.mean, variance, post.mean)


def welch_dof(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom.

    Computed on the two squared standard errors scaled by the larger (the formula depends on their ratio only):
    their squares underflowed to 0 for values near 1e-100 (ZeroDivisionError, a 500 for the results) and would
    overflow for values near 1e100.
    """
    s_a, s_b = var_a / n_a, var_b / n_b
    scale = max(s_a, s_b)
    a, b = s_a / scale, s_b / scale
    return (a + b) ** 2 / (b**2 / (n_b - 1) + a**2 / (n_a - 1))


def _relative_variance(control: Arm, treatment: Arm, a: _Adjusted, b: _Adjusted, theta: float) -> float:
    """Delta-method variance of ``(mean_b - mean_a) / |mean_a|``."""
    if theta == 0 or control.covariate is None or treatment.covariate is None:
        # gbstats variance_of_ratios(mean_b, var_b / n_b, mean_a, var_a / n_a, 0)
        return b.variance / b.n / a.mean**2 + a.variance / a.n * b.mean**2 / a.mean**4
    # gbstats frequentist_variance_relative_cuped
    base = a.unadjusted_mean
    pre_a, pre_b = control.covariate.pre, treatment.covariate.pre
    cov_a = covariance(a.n, _moments(control), pre_a, control.covariate.cross_sum)
    cov_b = covariance(b.n, _moments(treatment), pre_b, treatment.covariate.cross_sum)
    v_treatment = (treatment.post.variance + theta**2 * pre_b.variance - 2 * theta * cov_b) / (b.n * base**2)
    const = -treatment.post.mean
    v_control = (
        control.post.variance * const**2 / base**2 + 2 * theta * cov_a * const / base + theta**2 * pre_a.variance
    ) / (a.n * base**2)
    return v_treatment + v_control


def _relative(
    control: Arm, treatment: Arm, a: _Adjusted, b: _Adjusted, theta: float, dof: float, alpha: float
) -> Estimate | None:
    """The relative effect, or None when the control's mean is 0 or so close to it that its powers underflow.

    A control mean of 1e-90 (one unit's tiny value) made ``mean ** 4`` exactly 0: ZeroDivisionError, and the
    whole results answered 500. With no relative effect the comparison still has its absolute one.
    """
    if a.unadjusted_mean == 0:
        return None
    try:
        variance = _relative_variance(control, treatment, a, b, theta)
        estimate = (b.mean - a.mean) / abs(a.unadjusted_mean)
    except (ZeroDivisionError, OverflowError):
        return None
    if not (variance > 0 and math.isfinite(variance) and math.isfinite(estimate)):
        return None
    relative = _two_sided(estimate, variance, dof, alpha)
    return relative if math.isfinite(relative.ci_low) and math.isfinite(relative.ci_high) else None


def _two_sided(estimate: float, variance: float, dof: float, alpha: float) -> Estimate:
    std_error = math.sqrt(variance)
    statistic = estimate / std_error
    p_value = float(2 * student_t.sf(abs(statistic), dof))
    halfwidth = float(student_t.ppf(1 - alpha / 2, dof)) * std_error
    return Estimate(estimate, std_error, estimate - halfwidth, estimate + halfwidth, p_value)


def sequential_rho(alpha: float, tuning: float) -> float:
    """Mixture parameter tuned for ``tuning`` total units (eq. 161 of arXiv:2103.06476v7)."""
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tuning)


def _sequential(fixed: Estimate, n: int, alpha: float, tuning: float) -> Estimate:
    """Always-valid interval (eq. 9) and p-value (eq. 155) for the same estimate (gbstats' parametrization)."""
    rho = sequential_rho(alpha, tuning)
    s2 = fixed.std_error**2 * n
    nr2 = n * rho**2 + 1
    halfwidth = math.sqrt(s2) * math.sqrt(2 * nr2 * math.log(math.sqrt(nr2) / alpha) / (n * rho) ** 2)
    st2 = fixed.estimate**2 * n / fixed.std_error**2
    log_evalue = rho**2 * st2 / (2 * nr2) - 0.5 * math.log(nr2)
    p_value = 1.0 if log_evalue <= 0 else math.exp(-log_evalue)
    return Estimate(fixed.estimate, fixed.std_error, fixed.estimate - halfwidth, fixed.estimate + halfwidth, p_value)


def compare(
    control: Arm,
    treatment: Arm,
    *,
    alpha: float = 0.05,
    lower_is_better: bool = False,
    sequential_tuning: float | None = None,
) -> Comparison:
    """Compare ``treatment`` with ``control``; CUPED applies when both arms carry a covariate.

    Raises ``NotEnoughDataError`` when an arm has fewer than two units or no variance.
    """
    if control.n < 2 or treatment.n < 2:
        raise NotEnoughDataError("each variant needs at least 2 units with data")
    cuped = control.covariate is not None and treatment.covariate is not None
    theta = _theta(control, treatment) if cuped else 0.0
    a, b = _adjust(control, theta), _adjust(treatment, theta)
    if not all(math.isfinite(x) for x in (a.mean, a.variance, b.mean, b.variance)):
        # Sums that overflowed: every number that follows would be NaN, and a NaN p-value upsets the others' correction.
        raise NotEnoughDataError("a variant's values are too large to compare")
    if a.variance <= 0 or b.variance <= 0:
        raise NotEnoughDataError("a variant's values have no variance")
    dof = welch_dof(a.variance, a.n, b.variance, b.n)
    absolute = _two_sided(b.mean - a.mean, b.variance / b.n + a.variance / a.n, dof, alpha)
    relative = _relative(control, treatment, a, b, theta, dof, alpha)
    basis = relative or absolute
    chance = float(norm.sf(0, loc=basis.estimate, scale=basis.std_error))
    sequential_absolute = sequential_relative = None
    if sequential_tuning is not None:
        total = a.n + b.n
        sequential_absolute = _sequential(absolute, total, alpha, sequential_tuning)
        if relative is not None:
            sequential_relative = _sequential(relative, total, alpha, sequential_tuning)
    return Comparison(
        absolute=absolute,
        relative=relative,
        dof=dof,
        chance_to_win=1 - chance if lower_is_better else chance,
        sequential_absolute=sequential_absolute,
        sequential_relative=sequential_relative,
        cuped_theta=theta if cuped and theta != 0 else None,
    )


def credible_interval(estimate: Estimate, alpha: float = 0.05) -> tuple[float, float]:
    """Flat-prior normal credible interval (gbstats ``gaussian_credible_interval``)."""
    low, high = norm.ppf([alpha / 2, 1 - alpha / 2], loc=estimate.estimate, scale=estimate.std_error)
    return float(low), float(high)
