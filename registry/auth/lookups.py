"""A bound on the database reads made for API key ids the process does not know to exist.

A well-formed key with a made-up id misses every cache, so without a bound a client
sending thousands of distinct made-up keys a second made as many database reads (the
5-second negative cache is per id and never hit by random ids). Reads of such ids are
admitted at most ``per_second`` a second (a token bucket holding one second's worth)
and ``concurrency`` at a time, with a short queue behind those (``max_waiting``): past
the rate or the queue, the request gets 503 with ``Retry-After`` at once rather than
waiting for a database connection. The queue is what a process starting cold needs:
the first uses of many valid keys at once wait their turn instead of being refused.

Ids the database has confirmed (keys verified before) never pass through here, so a
valid key is not refused because of other clients' bad keys: only a key's first use in
a process competes with the flood, and that is answered 503, to retry, not 401.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from registry.lib.errors import ServiceUnavailableError

WAITING_PER_SLOT = 16  # reads of unknown ids queued for each of ``concurrency``'s places before refusals


class KeyLookupsBusyError(ServiceUnavailableError):
    """Too many keys of unknown ids are being checked; the caller retries after ``Retry-After``."""

    type = "api_key_lookups_busy"
    title = "Too many unknown API keys"


class UnknownKeyLookups:
    """Admits database reads of unknown key ids at a bounded rate and concurrency. Not thread-safe (one event loop).

    ``per_second`` or ``concurrency`` of 0 leaves that bound off.
    """

    def __init__(
        self,
        *,
        per_second: float,
        concurrency: int,
        max_waiting: int | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_second = per_second
        self._capacity = max(1.0, per_second)
        self._tokens = self._capacity
        self._clock = clock
        self._filled_at = clock()
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._max_waiting = WAITING_PER_SLOT * concurrency if max_waiting is None else max_waiting
        self.in_flight = 0
        self.waiting = 0
        self._refused = Counter(
            "registry_api_key_lookups_refused",
            "Requests answered 503 because the database reads of unknown API key ids were at their bound, "
            "by which bound (rate or concurrency).",
            ["bound"],
            registry=registry,
        )

    async def enter(self) -> None:
        """Take one read's place, waiting in the queue for it if need be, or raise ``KeyLookupsBusyError``;
        pair with ``leave`` once the read ended."""
        bounded = self._concurrency > 0
        if bounded and self.in_flight >= self._concurrency and self.waiting >= self._max_waiting:
            self._refused.labels("concurrency").inc()
            raise KeyLookupsBusyError(
                f"more than {self._concurrency + self._max_waiting} API keys of unknown ids are being checked at "
                "once; retry shortly",
                headers={"Retry-After": "1"},
            )
        if self._per_second > 0:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._filled_at) * self._per_second)
            self._filled_at = now
            if self._tokens < 1.0:
                self._refused.labels("rate").inc()
                wait = math.ceil((1.0 - self._tokens) / self._per_second)
                raise KeyLookupsBusyError(
                    f"more than {self._per_second:g} API keys of unknown ids a second are being checked; retry shortly",
                    headers={"Retry-After": str(max(1, wait))},
                )
            self._tokens -= 1.0
        if bounded:
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        if self._concurrency > 0:
            self._slots.release()
