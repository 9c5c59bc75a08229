"""The statistics engine: pure functions over sufficient statistics, no I/O."""

from registry.stats.checks import SRM_THRESHOLD, Correction, adjust, benjamini_hochberg, holm, srm_p_value
from registry.stats.effects import (
    DEFAULT_SEQUENTIAL_TUNING,
    Comparison,
    Estimate,
    NotEnoughDataError,
    compare,
    credible_interval,
    welch_dof,
)
from registry.stats.moments import (
    Arm,
    Covariate,
    Interval,
    Moments,
    Summary,
    covariance,
    mean_interval,
    wilson_interval,
)
from registry.stats.quantiles import QuantileMoments
from registry.stats.ratio import RatioMoments, variance_of_ratios

__all__ = [
    "DEFAULT_SEQUENTIAL_TUNING",
    "SRM_THRESHOLD",
    "Arm",
    "Comparison",
    "Correction",
    "Covariate",
    "Estimate",
    "Interval",
    "Moments",
    "NotEnoughDataError",
    "QuantileMoments",
    "RatioMoments",
    "Summary",
    "adjust",
    "benjamini_hochberg",
    "compare",
    "covariance",
    "credible_interval",
    "holm",
    "mean_interval",
    "srm_p_value",
    "variance_of_ratios",
    "welch_dof",
    "wilson_interval",
]
