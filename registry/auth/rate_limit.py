"""Requests per minute per API key, counted in memory and shared through Redis in batches.

A Redis round trip on every request would cost more than the render it guards,
so each process counts its own admissions and, every ``rate_limit_sync_seconds``,
adds them to a per-key, per-minute counter in Redis (one pipeline for every
active key) and reads back the total of all replicas. A request is admitted
while the last known total plus this process's unsent count is under the limit.

Windows are fixed calendar minutes, so ``Retry-After`` is the time to the next
one. The trade-off of batching: between two syncs a process does not see what
the others admitted, so with N replicas a key can overshoot its limit by what
the other N-1 admit in one sync interval (at most the limit each). Without
Redis, or while it is unreachable, each process enforces the limit on its own
traffic only, and nothing fails because of Redis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from registry.auth.principal import Principal
from registry.lib.errors import RateLimitedError
from registry.lib.logging import error_text

logger = structlog.get_logger("registry.auth")

WINDOW_SECONDS = 60


@dataclass(slots=True)
class _Window:
    minute: int
    counted: int = 0  # admissions of every replica, as last learned (this process's own when Redis is absent)
    unsent: int = 0  # this process's admissions not yet added to ``counted``


class RateLimiter:
    def __init__(
        self,
        redis: Redis | None,
        key_prefix: str,
        *,
        default_per_minute: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self.clock = clock  # the calendar clock that picks the minute; tests hold it still
        self._prefix = f"{key_prefix}rate:"
        self._default = default_per_minute
        self._windows: dict[int, _Window] = {}

    def admit(self, principal: Principal) -> None:
        """Count one request of ``principal``'s key, or refuse it with 429 when its minute is used up."""
        limit = self._default if principal.rate_limit_per_minute is None else principal.rate_limit_per_minute
        if limit <= 0:
            return
        now = self.clock()
        minute = int(now // WINDOW_SECONDS)
        window = self._windows.get(principal.key_id)
        if window is None or window.minute != minute:
            window = self._windows[principal.key_id] = _Window(minute)
        if window.counted + window.unsent >= limit:
            retry_after = max(1, math.ceil((minute + 1) * WINDOW_SECONDS - now))
            raise RateLimitedError(
                f"API key '{principal.public_id}' is over its limit of {limit} requests per minute",
                headers={"Retry-After": str(retry_after)},
            )
        window.unsent += 1

    async def sync(self) -> None:
        """Add this process's admissions to the shared counters and learn every replica's totals."""
        minute = int(self.clock() // WINDOW_SECONDS)
        for key_id in [k for k, w in self._windows.items() if w.minute < minute]:
            del self._windows[key_id]
        if not self._windows:
            return
        if self._redis is None:
            self._count_locally()
            return
        # Requests keep being admitted while the pipeline is in flight: only what was sent is subtracted.
        sent = [(key_id, window, window.unsent) for key_id, window in self._windows.items()]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id, window, count in sent:
                    name = f"{self._prefix}{key_id}:{window.minute}"
                    pipe.incrby(name, count)
                    pipe.expire(name, 2 * WINDOW_SECONDS)
                totals = (await pipe.execute())[::2]
        except (RedisError, OSError) as exc:
            logger.warning("rate limits counted per process: Redis is unreachable", error=error_text(exc))
            self._count_locally()
            return
        for (_, window, count), total in zip(sent, totals, strict=True):
            window.unsent -= count
            window.counted = int(total)

    def _count_locally(self) -> None:
        for window in self._windows.values():
            window.counted += window.unsent
            window.unsent = 0
