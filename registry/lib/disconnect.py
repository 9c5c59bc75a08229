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

from registry.lib.errors import RegistryError

T = TypeVar("T")


class ClientDisconnectedError(RegistryError):
    """The client closed the connection before the answer was ready; nobody receives this answer."""

    status_code = 499  # as nginx logs a client that closed the request
    type = "client_closed_request"
    title = "Client closed request"


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it and raise ``ClientDisconnectedError``.

    Call it once the request body has been read: every message ``receive``
    gives after that is the disconnect (or, with some servers, the end of the
    response). The work runs in the calling task, so a cancellation from
    outside (server shutdown) still reaches it and is not mistaken for a
    disconnect.
    """
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always called from a request's task
        return await work
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        result = await work
    except asyncio.CancelledError:
        if disconnected and task.uncancel() == 0:
            raise ClientDisconnectedError("the client closed the connection before the answer was ready") from None
        raise
    finally:
        watcher.cancel()
    if disconnected:
        task.uncancel()  # the work finished in spite of the cancellation; nothing is left to cancel
    return result
