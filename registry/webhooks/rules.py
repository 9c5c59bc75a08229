"""Pure rules of webhook delivery: which webhooks want an event, and when to retry."""

from __future__ import annotations

from collections.abc import Sequence

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


def retry_delay(attempts: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds before the next try after ``attempts`` failures: exponential, capped, with jitter in [0.5, 1]."""
    exponent = min(attempts - 1, 30)
    return float(min(cap, base * 2.0**exponent) * (0.5 + 0.5 * jitter))
