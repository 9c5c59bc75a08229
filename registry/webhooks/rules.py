"""Pure rules of webhook delivery: which webhooks want an event, when to retry, and when to give up on one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

from registry.outbox.events import EVENT_TYPES

RESOURCE_PREFIXES = frozenset(t.split(".", 1)[0] for t in EVENT_TYPES)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid subscription (``*``, ``prompt.*`` or an exact type)."""
    if pattern == "*" or pattern in EVENT_TYPES:
        return None
    if pattern.endswith(".*") and pattern[:-2] in RESOURCE_PREFIXES:
        return None
    return f"unknown event type '{pattern}'; use one of {', '.join(EVENT_TYPES)}, '<resource>.*' or '*'"


def subscribes(patterns: Sequence[str], event_type: str) -> bool:
    return any(
        pattern in ("*", event_type) or (pattern.endswith(".*") and event_type.startswith(pattern[:-1]))
        for pattern in patterns
    )


def retry_delay(attempts: int, *, base: float, cap: float, jitter: float, retry_after: float | None = None) -> float:
    """Seconds before the next try after ``attempts`` failures: exponential, capped, with jitter in [0.5, 1].

    A receiver's ``Retry-After`` (429, 503) is honoured when it asks for longer, up to ``cap``, as the
    completion backends' is: trying again sooner only meets the same refusal.
    """
    exponent = min(attempts - 1, 30)
    delay = float(min(cap, base * 2.0**exponent) * (0.5 + 0.5 * jitter))
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay


def retry_after_seconds(header: str | None, now: datetime) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not header:
        return None
    text = header.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    seconds = (when - now).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def failing_too_long(
    failures: int, failing_since: datetime | None, now: datetime, *, min_failures: int, min_duration: timedelta
) -> bool:
    """Whether a webhook whose last ``failures`` attempts all failed, since ``failing_since``, is to be disabled.

    Both must hold: a count alone would disable a receiver down for an hour during a burst of events, a
    duration alone one that failed twice a week apart.
    """
    return failing_since is not None and failures >= min_failures and now - failing_since >= min_duration
