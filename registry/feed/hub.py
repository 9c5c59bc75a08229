"""Fans changes from the change bus out to connected change-feed listeners.

Every replica receives every change (locally or through Redis), so a client may
listen on any replica. A listener that falls behind gets a ``reset`` instead of
an unbounded queue; so does everyone after the Redis subscription reconnects,
since changes may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from registry.experiments.router import UNIT_ERASED
from registry.lib.changes import Change, ChangeBus
from registry.lib.errors import RateLimitedError

FEED_KINDS = frozenset({"prompt", "config", "experiment"})
# Changes the replicas tell each other but listeners must not see: an erasure's names the erased unit (by digest).
PRIVATE_ACTIONS = frozenset({UNIT_ERASED})
QUEUE_SIZE = 1000
_RETRY_SECONDS = 60


class TooManyFeedsError(RateLimitedError):
    """The key holds as many change feeds open on this process as it may."""

    type = "too_many_feeds"
    title = "Too many change feeds"


@dataclass(frozen=True, slots=True)
class FeedItem:
    change: Change | None  # None: the feed is closing (shutdown)
    reset: bool = False


class Listener:
    def __init__(self, key: str = "") -> None:
        self.key = key  # the API key's public id
        self.queue: asyncio.Queue[FeedItem] = asyncio.Queue(QUEUE_SIZE)
        self.closing = False

    def offer(self, item: FeedItem) -> None:
        """Queue the item; a full queue becomes one ``reset``. The close goes first, alone, and stays last: a
        listener behind on its changes (whose close would otherwise wait behind them, or be dropped for a
        ``reset`` when its queue was full) must not hold a draining process open."""
        if self.closing:
            return
        if item.change is None and not item.reset:
            self.closing = True
            self._clear()
            self.queue.put_nowait(item)
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self._clear()
            self.queue.put_nowait(FeedItem(change=None, reset=True))

    def _clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


class FeedHub:
    def __init__(self, bus: ChangeBus, *, max_per_key: int = 100) -> None:
        self._listeners: set[Listener] = set()
        self._per_key: dict[str, int] = {}
        self.max_per_key = max_per_key
        self.closed = False
        bus.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        if change.kind == "reset":
            item = FeedItem(change=None, reset=True)
        elif change.kind in FEED_KINDS and change.action not in PRIVATE_ACTIONS:
            item = FeedItem(change=change)
        else:
            return
        for listener in list(self._listeners):
            listener.offer(item)

    def admit(self, key: str) -> None:
        """Refuse (429) a feed for ``key`` when it holds as many as it may: a feed never ends by itself, so
        one key could otherwise hold every connection the worker keeps."""
        if self._per_key.get(key, 0) >= self.max_per_key:
            raise TooManyFeedsError(
                f"this API key holds {self.max_per_key} change feeds open here, as many as it may; close one",
                headers={"Retry-After": str(_RETRY_SECONDS)},
            )

    def listen(self, key: str = "") -> Listener:
        listener = Listener(key)
        self._listeners.add(listener)
        if key:
            self._per_key[key] = self._per_key.get(key, 0) + 1
        if self.closed:
            listener.offer(FeedItem(change=None))
        return listener

    def listen_for(self, key: str) -> Listener | None:
        """A listener for ``key``'s feed; None when the key holds as many as it may (feeds opened at once that
        all passed ``admit``)."""
        if self._per_key.get(key, 0) >= self.max_per_key:
            return None
        return self.listen(key)

    def forget(self, listener: Listener) -> None:
        if listener not in self._listeners:
            return
        self._listeners.discard(listener)
        if listener.key:
            left = self._per_key[listener.key] - 1
            if left:
                self._per_key[listener.key] = left
            else:
                del self._per_key[listener.key]

    def close(self) -> None:
        """End every open feed, and any opened from now on (graceful shutdown must not wait on listeners)."""
        self.closed = True
        for listener in list(self._listeners):
            listener.offer(FeedItem(change=None))

    def __len__(self) -> int:
        return len(self._listeners)
