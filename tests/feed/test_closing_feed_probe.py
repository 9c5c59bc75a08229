"""A change feed ends when its process drains, even when its listener is behind on its changes."""

from __future__ import annotations

from registry.feed.hub import QUEUE_SIZE, FeedHub, FeedItem, Listener
from registry.lib.changes import Change, ChangeBus


def queued(listener: Listener) -> list[FeedItem]:
    return [listener.queue.get_nowait() for _ in range(listener.queue.qsize())]


def change(i: int) -> Change:
    return Change("prompt", f"p{i}", "promote")


def test_a_listener_whose_queue_is_full_gets_the_close_not_a_reset() -> None:
    hub = FeedHub(ChangeBus(None, "changes"))
    listener = hub.listen("key")
    for i in range(QUEUE_SIZE):
        listener.offer(FeedItem(change=change(i)))
    hub.close()
    assert queued(listener) == [FeedItem(change=None)]


def test_the_close_comes_before_changes_a_slow_listener_has_not_read() -> None:
    hub = FeedHub(ChangeBus(None, "changes"))
    listener = hub.listen("key")
    for i in range(10):
        listener.offer(FeedItem(change=change(i)))
    hub.close()
    assert listener.queue.get_nowait() == FeedItem(change=None)


def test_changes_after_the_close_do_not_push_it_out() -> None:
    hub = FeedHub(ChangeBus(None, "changes"))
    listener = hub.listen("key")
    hub.close()
    for i in range(QUEUE_SIZE + 5):
        listener.offer(FeedItem(change=change(i)))
    listener.offer(FeedItem(change=None, reset=True))
    assert queued(listener) == [FeedItem(change=None)]
