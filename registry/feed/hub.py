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

FEED_KINDS = frozenset({"prompt", "config", "experiment"})
# Changes the replicas tell each other but listeners must not see: an erasure's names the erased unit (by digest).
PRIVATE_ACTIONS = frozenset({UNIT_ERASED})
QUEUE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class FeedItem:
    change: Change | None  # None: the feed is closing (shutdown)
    reset: bool = False


class Listener:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[FeedItem] = asyncio.Queue(QUEUE_SIZE)

    def offer(self, item: FeedItem) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(FeedItem(change=None, reset=True))


class FeedHub:
    def __init__(self, bus: ChangeBus) -> None:
        self._listeners: set[Listener] = set()
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

    def listen(self) -> Listener:
        listener = Listener()
        self._listeners.add(listener)
        if self.closed:
            listener.offer(FeedItem(change=None))
        return listener

    def forget(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    def close(self) -> None:
        """End every open feed, and any opened from now on (graceful shutdown must not wait on listeners)."""
        self.closed = True
        for listener in list(self._listeners):
            listener.offer(FeedItem(change=None))

    def __len__(self) -> int:
        return len(self._listeners)
