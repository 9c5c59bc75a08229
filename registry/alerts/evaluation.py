"""Pure rules of alerting: a signal's value from one window of observations, and a series' next state.

No I/O and no clock reads: the evaluator passes the window's totals and ``now``, so every rule is
tested from JSON cases (tests/alerts/cases/evaluation.json).

A series fires when its value reaches the threshold and has stayed there ``for_seconds`` (pending
meanwhile; one evaluation below the threshold starts the wait again). A firing series resolves only
when its value falls below ``resolve_threshold`` (the threshold unless a lower one is given: the band
between them is the hysteresis) or its window holds too little to judge. While firing, nothing is
sent again: one incident per firing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Status = Literal["inactive", "pending", "firing"]
Transition = Literal["fire", "resolve"]

# What each kind measures, in the unit its threshold is given in.
UNITS = {
    "error_rate": "fraction of completions that failed",
    "latency_p95": "milliseconds (95th percentile of successful completions)",
    "ttft_p95": "milliseconds to the first token (95th percentile)",
    "cost_per_hour": "cost per hour, at the configs' prices",
    "breaker_open": "requests refused by an open circuit breaker (those failed over to a fallback included)",
    "budget": "fraction of the key's monthly budget used",
    "rollout_rolled_back": "rollouts rolled back",
}


@dataclass(frozen=True, slots=True)
class Window:
    """One series' observations in one window (only the fields its kind reads are filled)."""

    requests: int = 0  # completions that ended (ok or error; a client that went away is not counted)
    errors: int = 0
    samples: int = 0  # latencies behind ``quantile``
    quantile: float | None = None
    cost: float = 0.0
    events: int = 0  # refusals by an open breaker, rollbacks
    tokens: int = 0  # this month's, for budgets
    token_budget: int | None = None
    cost_budget: float | None = None


def signal_value(kind: str, window: Window, *, window_seconds: float, min_count: int) -> float | None:
    """The value a rule of ``kind`` compares with its threshold; None when the window cannot be judged."""
    if kind == "error_rate":
        if window.requests == 0 or window.requests < min_count:
            return None
        return window.errors / window.requests
    if kind in ("latency_p95", "ttft_p95"):
        if window.quantile is None or window.samples == 0 or window.samples < min_count:
            return None
        return window.quantile
    if kind == "cost_per_hour":
        return window.cost * 3600.0 / window_seconds
    if kind in ("breaker_open", "rollout_rolled_back"):
        return float(window.events)
    if kind == "budget":
        shares = []
        if window.token_budget is not None and window.token_budget > 0:
            shares.append(window.tokens / window.token_budget)
        if window.cost_budget is not None and window.cost_budget > 0:
            shares.append(window.cost / window.cost_budget)
        return max(shares) if shares else None
    raise ValueError(f"unknown alert kind {kind!r}")


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile with linear interpolation between ranks, as PostgreSQL's ``percentile_cont``."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class SeriesState:
    status: Status = "inactive"
    since: datetime | None = None  # pending: when the value first reached the threshold; firing: when it fired


INACTIVE = SeriesState()


@dataclass(frozen=True, slots=True)
class Condition:
    threshold: float
    resolve_threshold: float | None = None
    for_seconds: float = 0.0

    @property
    def clears_below(self) -> float:
        return self.threshold if self.resolve_threshold is None else self.resolve_threshold


def step(
    state: SeriesState, value: float | None, condition: Condition, now: datetime
) -> tuple[SeriesState, Transition | None]:
    """The series' state after an evaluation that saw ``value``, and whether it fired or resolved now."""
    if state.status == "firing":
        if value is None or value < condition.clears_below:
            return INACTIVE, "resolve"
        return state, None
    if value is None or value < condition.threshold:
        return INACTIVE, None
    since = state.since if state.status == "pending" and state.since is not None else now
    if (now - since).total_seconds() >= condition.for_seconds:
        return SeriesState("firing", now), "fire"
    return SeriesState("pending", since), None
