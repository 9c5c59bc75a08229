"""The local cache: fresh, expired (served while it revalidates) or unverified (revalidated before use).

An invalidation from the change feed never throws a copy away: the copy becomes
*unverified*, so it is not served while the service can answer, yet it is still
there when the service cannot. A fetch that started before an invalidation stores
its result as unverified too, since it may predate the change.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Freshness(enum.Enum):
    FRESH = "fresh"  # serve it
    EXPIRED = "expired"  # serve it, and revalidate in the background
    UNVERIFIED = "unverified"  # a change may have happened: revalidate first, serve it only if that fails
    MISSING = "missing"


@dataclass(slots=True)
class CacheEntry(Generic[V]):
    value: V
    etag: str | None
    expires_at: float
    verified: bool


class TtlCache(Generic[K, V]):
    """Thread-safe; ``group`` maps a key to what invalidations name (a prompt's name)."""

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        group: Callable[[K], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._group = group
        self._clock = clock
        self._entries: OrderedDict[K, CacheEntry[V]] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0  # counts invalidations
        self._invalidated: dict[str, int] = {}  # group -> epoch of its last invalidation
        self._reset_at = 0  # epoch of the last invalidation of everything

    def lookup(self, key: K) -> tuple[Freshness, CacheEntry[V] | None]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return Freshness.MISSING, None
            self._entries.move_to_end(key)
            if not entry.verified:
                return Freshness.UNVERIFIED, entry
            if self._clock() >= entry.expires_at:
                return Freshness.EXPIRED, entry
            return Freshness.FRESH, entry

    def token(self) -> int:
        """Take before fetching; give to ``store`` or ``renew`` so a change seen meanwhile is not overwritten."""
        with self._lock:
            return self._epoch

    def store(self, key: K, value: V, *, etag: str | None, token: int) -> None:
        with self._lock:
            self._entries[key] = CacheEntry(value, etag, self._clock() + self._ttl, not self._changed_since(key, token))
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def renew(self, key: K, *, token: int) -> CacheEntry[V] | None:
        """The service confirmed the copy (304): fresh again, unless a change arrived meanwhile."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not self._changed_since(key, token):
                entry.verified = True
                entry.expires_at = self._clock() + self._ttl
            return entry

    def invalidate(self, group: str) -> list[K]:
        """Mark the copies of ``group`` unverified; returns their keys (to refresh them)."""
        with self._lock:
            self._epoch += 1
            self._invalidated[group] = self._epoch
            keys = [key for key in self._entries if self._group(key) == group]
            for key in keys:
                self._entries[key].verified = False
            return keys

    def invalidate_all(self) -> list[K]:
        with self._lock:
            self._epoch += 1
            self._reset_at = self._epoch
            self._invalidated.clear()
            for entry in self._entries.values():
                entry.verified = False
            return list(self._entries)

    def discard(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def _changed_since(self, key: K, token: int) -> bool:
        return max(self._reset_at, self._invalidated.get(self._group(key), 0)) > token
