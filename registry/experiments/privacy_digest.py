"""How stored data names an erasable unit without keeping it, and how long a process remembers its erasure (pure,
importable from any domain)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping


def unit_digest(unit: str) -> str:
    """How the audit log and the caches name a unit: a digest, so they do not keep what erasure removes."""
    return "sha256:" + hashlib.sha256(unit.encode()).hexdigest()[:32]


# How long after a unit's erasure a request that began before it may still be in flight and record the unit's data
# (a completion's attempts each end within its backend's total_timeout, 120 s by default): what such a request
# writes meanwhile is written without the unit, or not at all. Also ``registry.completions.usage.ERASED_SECONDS``
# and the exact cache's tombstones (``registry.completions.cache.IN_FLIGHT_SECONDS``).
ERASURE_IN_FLIGHT_SECONDS = 3600.0


def window_start(first_seen: float) -> float:
    """The earliest erasure (Unix time) that covers data first seen at ``first_seen``: one at most
    ``ERASURE_IN_FLIGHT_SECONDS`` before it, or any later one."""
    return first_seen - ERASURE_IN_FLIGHT_SECONDS


class RecentErasures:
    """The units whose committed erasure reached this process in the last ``ERASURE_IN_FLIGHT_SECONDS``, by digest:
    one per process, shared by what writes a unit's facts after a request (the exposure buffer, the outcome events).

    Data of such a unit received before the window ends (``covers``) is dropped, not written. News of an erasure
    may come late (pub/sub), so every write, once committed, queues its units in ``to_check`` with when they were
    first seen; the next flush looks them up in the durable record of erasures (their audit entries) and erases
    again the facts of those erased within the window (``registry.experiments.exposures.erase_written_again``),
    learning of the erasure meanwhile (``learn``). Units found erased whose facts could not be erased again (the
    write failed) wait in ``written_after`` for the next flush.
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}  # digest -> until when (Unix time) the unit's data is dropped
        self.written_after: set[str] = set()  # units written after their erasure, until their facts are erased again
        self.to_check: dict[str, float] = {}  # units of committed writes -> first seen (Unix time), until checked

    def __bool__(self) -> bool:
        return bool(self._until)

    def remember(self, digest: str, *, erased_at: float | None = None) -> None:
        """The unit's erasure committed (at ``erased_at``, Unix time; now when the news just came)."""
        at = time.time() if erased_at is None else erased_at
        self._until[digest] = max(self._until.get(digest, 0.0), at + ERASURE_IN_FLIGHT_SECONDS)

    def learn(self, erased: Mapping[str, float]) -> None:
        """Erasures read from the durable record (digest -> when, Unix time): remembered as if heard then."""
        for digest, at in erased.items():
            self.remember(digest, erased_at=at)

    def check_later(self, first_seen: Mapping[str, float]) -> None:
        """Units a write committed (unit -> first seen, Unix time): the next flush checks them against the durable
        record of erasures."""
        for unit, at in first_seen.items():
            self.to_check[unit] = min(self.to_check.get(unit, at), at)

    def covers(self, digest: str, at: float) -> bool:
        """Whether data of the unit of ``digest`` first seen at ``at`` (Unix time) is to be dropped."""
        return self._until.get(digest, 0.0) > at

    def until(self, digest: str) -> float:
        return self._until.get(digest, 0.0)

    def prune(self) -> None:
        """Forget the erasures no request in flight during them can follow any more."""
        now = time.time()
        for expired in [digest for digest, until in self._until.items() if until <= now]:
            del self._until[expired]
