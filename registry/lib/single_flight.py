"""One load per key at a time, so requests that miss the same cache entry together make one database read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _AbandonedError(Exception):
    """The caller running a load was cancelled before it ended: a waiter runs it again."""


class SingleFlight(Generic[K, V]):
    """Coalesces concurrent loads of one key: the first caller runs it, the others wait for its outcome.

    A failed load fails every caller waiting on it with the same error, once; the next call loads
    again. A waiter's cancellation leaves the load running for the others; if the caller running it
    is cancelled, one of the waiters runs it instead (a cancellation is no answer to give them).
    Not thread-safe: used from one event loop.
    """

    def __init__(self) -> None:
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        while (pending := self._loading.get(key)) is not None:
            try:
                return await asyncio.shield(pending)
            except _AbandonedError:
                continue
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.set_exception(_AbandonedError())
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(value)
            return value
        finally:
            future.exception()  # mark retrieved: there may be no waiters
            if self._loading.get(key) is future:
                del self._loading[key]

    def forget(self, key: K) -> None:
        """Let the next call load ``key`` anew instead of joining a load that began before a change."""
        self._loading.pop(key, None)

    def forget_where(self, predicate: Callable[[K], bool]) -> None:
        for key in [k for k in self._loading if predicate(k)]:
            del self._loading[key]

    def forget_all(self) -> None:
        self._loading.clear()
