"""Resilience rules as pure functions: retry backoff, what to retry, the circuit breaker.

No I/O and no clock reads here: callers pass ``now`` and the random jitter, so
every rule is tested from JSON cases (tests/completions/cases/).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal


def backoff_delay(retry: int, *, base: float, cap: float, jitter: float, retry_after: float | None = None) -> float:
    """Seconds before retry number ``retry`` (0 for the first retry).

    Exponential with "equal jitter": half of ``min(cap, base * 2**retry)`` is
    fixed, the other half scaled by ``jitter`` in [0, 1), so concurrent clients
    spread out yet never retry at once. A server's ``Retry-After`` is honoured
    when it asks for longer, up to ``cap``.
    """
    ceiling = min(cap, math.ldexp(base, retry))  # base * 2**retry
    delay = ceiling / 2 + jitter * ceiling / 2
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay


Outcome = Literal["success", "retry", "bad_request", "context_length", "failure"]

# Statuses after which the same request may succeed shortly: overload and temporary unavailability.
RETRYABLE_STATUSES = frozenset({429, 503})


def classify_status(status: int, body: str = "") -> Outcome:
    """What an upstream HTTP status means for the request."""
    if status < 300:
        return "success"
    if status in RETRYABLE_STATUSES:
        return "retry"
    if status in (400, 413, 422):
        return "context_length" if "context length" in body.lower() else "bad_request"
    return "failure"


def counts_against_breaker(outcome: Outcome) -> bool:
    """Failures that say the backend is unhealthy; a refused request or overload (429) says it is alive."""
    return outcome == "failure"


class BreakerStatus(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerState:
    status: BreakerStatus = BreakerStatus.CLOSED
    failures: int = 0  # consecutive
    opened_at: float = 0.0
    probing: bool = False  # half-open: a probe request is in flight


def breaker_admit(state: BreakerState, *, now: float, cooldown: float) -> tuple[BreakerState, bool]:
    """Whether a request may go to the backend, and the new state.

    Closed admits all. Open admits nothing until ``cooldown`` has passed, then
    turns half-open and admits exactly one probe; others wait for its outcome.
    """
    if state.status == BreakerStatus.CLOSED:
        return state, True
    if state.status == BreakerStatus.OPEN:
        if now - state.opened_at < cooldown:
            return state, False
        return replace(state, status=BreakerStatus.HALF_OPEN, probing=True), True
    if state.probing:
        return state, False
    return replace(state, probing=True), True


def breaker_record(state: BreakerState, *, failed: bool, now: float, threshold: int) -> BreakerState:
    """The state after a request admitted by ``breaker_admit`` finished."""
    if not failed:
        return BreakerState()
    if state.status == BreakerStatus.HALF_OPEN:
        return BreakerState(BreakerStatus.OPEN, state.failures + 1, opened_at=now)
    if state.status == BreakerStatus.OPEN:
        return replace(state, failures=state.failures + 1)
    failures = state.failures + 1
    if failures >= threshold:
        return BreakerState(BreakerStatus.OPEN, failures, opened_at=now)
    return replace(state, failures=failures)


def breaker_answered(state: BreakerState) -> BreakerState:
    """A request admitted by ``breaker_admit`` got its first token: a half-open breaker closes at once.

    The backend answered its probe. Waiting for the probe's last token would refuse every other request
    for as long as one completion takes (minutes) after the backend has recovered; a closed breaker still
    counts the probe's outcome when it ends, as any request's.
    """
    return BreakerState() if state.status == BreakerStatus.HALF_OPEN else state


def breaker_release(state: BreakerState) -> BreakerState:
    """A request ended without telling anything about the backend (cancelled): free the probe slot."""
    return replace(state, probing=False) if state.status == BreakerStatus.HALF_OPEN else state


def breaker_retry_after(state: BreakerState, *, now: float, cooldown: float) -> float:
    """Seconds until an open breaker lets a probe through."""
    if state.status != BreakerStatus.OPEN:
        return 1.0
    return max(0.0, cooldown - (now - state.opened_at))
