"""A phase over time: each variant's units and primary metric, cumulative by first exposure (pure).

A unit counts from the hour (or day, UTC) of its first exposure in the phase, with its metric
value as it stands now: the last point of a variant is therefore its units and mean in the
results. As in the results, ``sum``, ``count`` and ``any`` metrics average over every unit (no
data is 0) and ``mean`` and ``max`` over the units with data; units seen in several variants
are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from registry.experiments.aggregation import ZERO_FILLED

Interval = Literal["hour", "day"]
STEPS: dict[Interval, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_POINTS = 2000  # per variant: five years of days, or twelve weeks of hours
HOURLY_UP_TO = timedelta(days=3)  # a phase shorter than this is shown by the hour when no interval is asked


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """Units of one variant first exposed in one bucket, and their metric (``valued`` of them have a value)."""

    at: datetime
    variant: str
    units: int
    valued: int
    total: float


@dataclass(frozen=True, slots=True)
class TimePoint:
    at: datetime
    units: int  # first exposed in this bucket
    cumulative_units: int
    mean: float | None  # of the metric over the units so far; None without a metric or data


def default_interval(started_at: datetime, ended_at: datetime) -> Interval:
    return "hour" if ended_at - started_at <= HOURLY_UP_TO else "day"


def point_count(rows: Sequence[TimelineRow], interval: Interval) -> int:
    """How many buckets the series spans, first to last (gaps included)."""
    if not rows:
        return 0
    first, last = min(r.at for r in rows), max(r.at for r in rows)
    return int((last - first) / STEPS[interval]) + 1


def cumulative_series(
    rows: Sequence[TimelineRow], variants: Sequence[str], interval: Interval, aggregation: str | None
) -> dict[str, list[TimePoint]]:
    """Every variant's points, one per bucket from the first exposure's to the last one's."""
    series: dict[str, list[TimePoint]] = {v: [] for v in variants}
    if not rows:
        return series
    by_bucket = {(r.at, r.variant): r for r in rows}
    step = STEPS[interval]
    first = min(r.at for r in rows)
    buckets = [first + step * i for i in range(point_count(rows, interval))]
    zero_filled = aggregation in ZERO_FILLED
    for variant in variants:
        units = valued = 0
        total = 0.0
        for at in buckets:
            row = by_bucket.get((at, variant))
            if row is not None:
                units, valued, total = units + row.units, valued + row.valued, total + row.total
            denominator = units if zero_filled else valued
            mean = total / denominator if aggregation is not None and denominator else None
            series[variant].append(TimePoint(at, row.units if row else 0, units, mean))
    return series
