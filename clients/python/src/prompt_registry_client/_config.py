"""Small configuration objects of the clients: retries, the prompt cache, event batching."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A completion that failed with 502 or 504 may have run for a while upstream (the service already retried
# it); only answers that say nothing ran are worth another try, and a 503 only when it says when to try again
# (Retry-After): without one (backend_not_configured) no later try can succeed.
COMPLETION_RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How requests that failed for want of the service are tried again.

    Connection errors, 429, 502, 503 and 504 are retried with exponential backoff and
    jitter; a ``Retry-After`` from the service is honoured when it is at most
    ``max_backoff`` (a longer one, such as a monthly budget, raises at once). A request
    that must not run twice (a POST) is retried only when it cannot have run: a
    connection that failed before it left, 429, 503; a lost answer, 502 and 504 raise.

    Example::

        RegistryClient(retries=RetryPolicy(attempts=5, backoff=0.2, max_backoff=5.0))
    """

    attempts: int = 3  # tries in all; 1 turns retries off
    backoff: float = 0.1  # the first delay's ceiling, in seconds; doubles per try
    max_backoff: float = 2.0  # the longest delay, and the longest Retry-After honoured
    # Once the service was found unreachable, calls that have a cached copy or a fallback serve it at once
    # for this long (a background request checks whether the service is back), instead of each waiting
    # for its own timeouts and retries.
    cooldown: float = 5.0

    def delay(
        self, attempt: int, *, retry_after: float | None = None, rand: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait after failed try number ``attempt`` (from 0), or None to give up."""
        if attempt + 1 >= self.attempts:
            return None
        if retry_after is not None:
            return max(retry_after, 0.0) if retry_after <= self.max_backoff else None
        ceiling = min(self.max_backoff, self.backoff * 2.0**attempt)
        return ceiling / 2 + rand() * ceiling / 2  # jittered, but never zero


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number (fractions accepted) or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CachePolicy:
    """The local prompt cache.

    A copy younger than ``ttl`` is served without a request; an older one is served at
    once while it is revalidated in the background (``If-None-Match``: an unchanged
    prompt costs a 304). With ``watch_changes`` the client listens to the service's change
    feed, so a promotion or rollback reaches it within moments instead of ``ttl``; the
    feed is one connection, opened when the first prompt is cached. When it drops it is
    reconnected within ``feed_reconnect_delay`` (jittered: half of it to all of it) for as long
    as the registry has been gone less than ``feed_fast_reconnects_for``, so a restart or a short
    outage costs about a second; only a longer outage makes the pauses double, up to
    ``feed_max_backoff``. Every reconnect revalidates every cached copy, since changes may have
    been missed meanwhile.

    Example::

        RegistryClient(cache=CachePolicy(ttl=300, watch_changes=False))  # a short-lived script
    """

    ttl: float = 60.0
    max_entries: int = 1000  # prompts (per label or version) and experiment lists kept; least recently used go
    watch_changes: bool = True
    feed_read_timeout: float = 60.0  # a silent feed is reconnected after this (the service sends keep-alives)
    feed_reconnect_delay: float = 0.8  # the longest pause between reconnects while the registry was up recently
    feed_fast_reconnects_for: float = 60.0  # gone longer than this: pauses double, up to feed_max_backoff
    feed_max_backoff: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPolicy:
    """How tracked events and exposures are sent: in the background, in batches.

    A batch leaves every ``flush_interval`` seconds, or at once when ``max_batch`` are
    waiting. At most ``max_pending`` wait (more are dropped and counted: the app never
    blocks); ``close()`` and interpreter exit send what is left, for up to ``close_timeout``
    (a batch still waiting for its answer then is given up, and counted as not sent).
    """

    flush_interval: float = 1.0
    max_batch: int = 500  # the service takes up to 1000 per request
    max_pending: int = 10_000
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 1000:
            raise ValueError("max_batch must be between 1 and 1000")
