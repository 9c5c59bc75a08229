"""Stop a request's work when its client goes away.

ASGI tells only whoever calls ``receive`` that the client disconnected. A
streamed response listens while it streams (Litestar does that), but a handler
that awaits something long, such as a completion running on a backend, would
finish it for nobody. ``cancel_on_disconnect`` listens while the handler waits
and cancels the work, so its own cleanup (closing an upstream connection,
recording the cancellation) runs at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from litestar.types import Receive

from registry.lib.errors import ClientDisconnectedError

__all__ = ["ClientDisconnectedError", "DisconnectWatch", "cancel_on_disconnect"]

T = TypeVar("T")


class DisconnectWatch:
    """Cancels the request's task if its client goes away, from when the body has been read until ``stop``.

    One task per request however long it lasts: the same watch covers the wait for the
    first token and then the stream, where Litestar would start a task group of its own.
    Start it once the request body has been read: every message ``receive`` gives after
    that is the disconnect (or, with some servers, the end of the response).
    """

    __slots__ = ("_armed", "_task", "_watcher", "disconnected")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always made in a request's task
            raise RuntimeError("a disconnect watch belongs to a request's task")
        self._task = task
        self._armed = True
        self.disconnected = False
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        if self._armed:
            self._task.cancel()

    async def until(self, work: Awaitable[T]) -> T:
        """Await ``work`` in this task; if the client disconnects first, it is cancelled and
        ``ClientDisconnectedError`` raised. The work runs in the calling task, so a cancellation
        from outside (server shutdown) still reaches it and is not mistaken for a disconnect."""
        try:
            result = await work
        except asyncio.CancelledError:
            if self.left():
                raise ClientDisconnectedError("the client closed the connection before the answer was ready") from None
            raise
        if self.disconnected:
            self._task.uncancel()  # the work finished in spite of the cancellation; nothing is left to cancel
        return result

    def left(self) -> bool:
        """Called on a ``CancelledError``: whether it was this watch's (the client left), which is then taken back."""
        return self.disconnected and self._task.uncancel() == 0

    def stop(self) -> None:
        self._armed = False
        self._watcher.cancel()


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it and raise ``ClientDisconnectedError``.

    Call it once the request body has been read (see ``DisconnectWatch``).
    """
    watch = DisconnectWatch(receive)
    try:
        return await watch.until(work)
    finally:
        watch.stop()
