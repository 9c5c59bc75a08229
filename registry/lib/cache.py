"""A small in-process LRU cache with per-entry expiry, for the read fast path."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """LRU with expiry. Not thread-safe: used from one event loop."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at < self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def peek(self, key: K) -> tuple[V, bool] | None:
        """The value kept for ``key``, expired or not, and whether it is still fresh; a fresh one counts as used.

        For callers that serve an expired value while its source cannot be read; ``get`` drops it instead.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        fresh = expires_at >= self._clock()  # as ``get``: expired only past its time
        if fresh:
            self._entries.move_to_end(key)
        return value, fresh

    def set(self, key: K, value: V, ttl: float) -> None:
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def pop_where(self, predicate: Callable[[K], bool]) -> None:
        for key in [k for k in self._entries if predicate(k)]:
            del self._entries[key]

    def pop_values_where(self, predicate: Callable[[V], bool]) -> int:
        """Drop every entry, fresh or expired, whose value matches; returns how many were fresh."""
        now, fresh = self._clock(), 0
        for key in [k for k, (_, value) in self._entries.items() if predicate(value)]:
            fresh += self._entries.pop(key)[0] >= now
        return fresh

    def fresh_where(self, predicate: Callable[[V], bool]) -> list[tuple[V, float]]:
        """The fresh values that match, each with the seconds it has left; none counts as used."""
        now = self._clock()
        return [
            (value, expires_at - now)
            for expires_at, value in self._entries.values()
            if expires_at >= now and predicate(value)
        ]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
