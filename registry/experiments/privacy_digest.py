"""How stored data names an erasable unit without keeping it, and how long a process remembers its erasure (pure,
importable from any domain)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager


def unit_digest(unit: str) -> str:
    """How the audit log and the caches name a unit: a digest, so they do not keep what erasure removes."""
    return "sha256:" + hashlib.sha256(unit.encode()).hexdigest()[:32]


# How long after a unit's erasure a request that began before it may still be in flight and record the unit's data
# (a completion's attempts each end within its backend's total_timeout, 120 s by default): what such a request
# writes meanwhile is written without the unit, or not at all. Also ``registry.completions.usage.ERASED_SECONDS``
# and the exact cache's tombstones (``registry.completions.cache.IN_FLIGHT_SECONDS``).
ERASURE_IN_FLIGHT_SECONDS = 3600.0


class RecentErasures:
    """The units whose erasure reached this process in the last ``ERASURE_IN_FLIGHT_SECONDS``, by digest: one per
    process, shared by what writes a unit's facts after a request (the exposure buffer, the outcome events).

    Data of such a unit received before the window ends (``covers``) is dropped, not written. A write under way when
    an erasure is heard (``watching``) may commit after the erasure's delete: the units it wrote are then queued in
    ``written_after``, whose facts the next flush erases again.
    """

    def __init__(self) -> None:
        self._until: dict[str, float] = {}  # digest -> until when (Unix time) the unit's data is dropped
        self._watchers: dict[int, set[str]] = {}  # by id: two watchers' sets may be equal
        self.written_after: set[str] = set()  # units written after their erasure, until their facts are erased again

    def __bool__(self) -> bool:
        return bool(self._until)

    def remember(self, digest: str) -> None:
        self._until[digest] = max(self._until.get(digest, 0.0), time.time() + ERASURE_IN_FLIGHT_SECONDS)
        for heard in self._watchers.values():
            heard.add(digest)

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

    def watch(self) -> set[str]:
        """Start collecting the digests of the erasures heard from now on, until ``unwatch``."""
        heard: set[str] = set()
        self._watchers[id(heard)] = heard
        return heard

    def unwatch(self, heard: set[str]) -> None:
        self._watchers.pop(id(heard), None)

    @contextmanager
    def watching(self) -> Iterator[set[str]]:
        """The digests of the erasures heard while the block runs (a write under way)."""
        heard = self.watch()
        try:
            yield heard
        finally:
            self.unwatch(heard)
