"""A streamed response whose first part is already in hand and leaves right behind the headers.

Litestar sends every part of a ``Stream`` from a task it starts after the headers, so
the first part waits one turn of the event loop (about 0.2 ms in process on our
benchmark machine), and a server may write the headers and that part separately.
A completion's first part is its first token, taken before the response begins (so
that a failure before it still gets its own status), so nothing is gained by that
wait: this response sends it from the task that sent the headers.

A client that stops reading without disconnecting would otherwise hold a stream for ever:
the server's ``send`` waits on the full socket, and nothing else wakes the stream, so what
it holds (a backend's slot and connection, the key's budget hold, a feed listener) stays
held. Each part's send is bounded (``StallWatch``, ``stream_send_timeout_seconds``), and a
send past it ends the stream as a client that left, and its connection is dropped where the server lets the
app do so (the scope's ``registry.abort`` extension, ``registry.lib.server``): closed, it would stay open, and
count against the worker's connections, until the client went away, its unread data waiting to be flushed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from litestar.enums import MediaType
from litestar.response import ServerSentEvent, Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.utils.helpers import get_enum_string_value

from registry.settings import Settings

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.connection import Request
    from litestar.datastructures import Cookie
    from litestar.response.base import ASGIResponse
    from litestar.types import Message, Receive, Scope, Send, TypeEncodersMap

logger = logging.getLogger(__name__)
DEFAULT_SEND_TIMEOUT: float = Settings.model_fields["stream_send_timeout_seconds"].default


def send_timeout(scope: Scope) -> float:
    """``stream_send_timeout_seconds`` of the runtime serving the request (the request-context middleware puts
    it in the scope's state)."""
    runtime = scope["state"].get("runtime")
    return DEFAULT_SEND_TIMEOUT if runtime is None else float(runtime.settings.stream_send_timeout_seconds)


ABORT_EXTENSION = "registry.abort"


def connection_abort(scope: Scope) -> Callable[[], None] | None:
    """What drops the request's connection at once, unsent data and all, where its server offers it (the
    ``registry.abort`` extension, whose ``abort`` it is)."""
    extension = (scope.get("extensions") or {}).get(ABORT_EXTENSION)
    return None if extension is None else cast("Callable[[], None]", extension["abort"])


class _Sweep:
    """One timer per event loop that looks at each stream being sent (``StallWatch``), a quarter of the shortest
    bound apart: a stream costs an insert and a delete here, where a timer of its own was set and cancelled."""

    __slots__ = ("handle", "loop", "period", "watches")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watches: dict[StallWatch, None] = {}
        self.handle: asyncio.TimerHandle | None = None
        self.period = math.inf

    def add(self, watch: StallWatch) -> None:
        self.watches[watch] = None
        period = watch.seconds / 4
        if period < self.period:  # the first stream, or one of a shorter bound (another app's, in tests)
            if self.handle is not None:
                self.handle.cancel()
            self.period = period
            self.handle = self.loop.call_later(period, self.look)

    def look(self) -> None:
        now = self.loop.time()
        for watch in [watch for watch in self.watches if watch.stalled_at(now)]:
            del self.watches[watch]
            watch.stall()
        if self.watches:
            self.handle = self.loop.call_later(self.period, self.look)
        else:
            self.handle, self.period = None, math.inf


_SWEEPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweep] = weakref.WeakKeyDictionary()


class StallWatch:
    """Cancels a stream's task once one of its sends has waited ``seconds``: its client stopped reading.

    A server's ``send`` waits while the socket's buffers are full, that is for as long as the client does not
    read. A timeout around each send (a timer set and cancelled per token) cost more than the rest of a
    token's relaying; here a send costs two increments (``sends`` is odd while one is under way), and the
    event loop's one sweep (``_Sweep``) looks at every stream a quarter of the bound apart: a send seen under
    way, with no other sent since, for ``seconds`` has waited at least that (and at most half as long again).
    ``abort``, where the server offers one (``connection_abort``), then drops the connection, which the
    client would otherwise keep.
    """

    __slots__ = ("_abort", "_last", "_since", "_sweep", "_task", "seconds", "sends", "stalled")

    def __init__(self, seconds: float, abort: Callable[[], None] | None = None) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always made in a request's task
            raise RuntimeError("a stall watch belongs to a stream's task")
        self._task = task
        self.seconds = seconds
        self._abort = abort
        self._last = 0
        self._since = 0.0
        self.sends = 0  # incremented as each send starts and as it ends
        self.stalled = False
        loop = asyncio.get_running_loop()
        sweep = _SWEEPS.get(loop)
        if sweep is None:
            sweep = _SWEEPS[loop] = _Sweep(loop)
        self._sweep = sweep
        sweep.add(self)

    def stalled_at(self, now: float) -> bool:
        """Whether, at ``now``, one send has been under way for ``seconds`` (since the first look that saw it)."""
        sends = self.sends
        if not sends & 1 or sends != self._last:
            self._last, self._since = sends, now
            return False
        return now - self._since >= self.seconds

    def stall(self) -> None:
        self.stalled = True
        logger.warning("a client read nothing of its stream for %g s: the stream ends as if it had left", self.seconds)
        if self._abort is not None:
            self._abort()
        self._task.cancel()

    async def send(self, send: Send, message: Message) -> None:
        self.sends += 1
        await send(message)
        self.sends += 1

    def watched(self, send: Send) -> Send:
        """``send``, each message counted (for a sender that does not count its own)."""

        async def send_watched(message: Message) -> None:
            self.sends += 1
            await send(message)
            self.sends += 1

        return send_watched

    def took(self) -> bool:
        """Called on a ``CancelledError``: whether it was this watch's (the client stopped reading), which is then
        taken back."""
        return self.stalled and self._task.uncancel() == 0

    def stop(self) -> None:
        self._sweep.watches.pop(self, None)


class _BoundedStreamResponse(ASGIStreamingResponse):
    """Litestar's streaming response whose every send is bounded (``StallWatch``); a client that stops reading
    ends it as one that left: quietly, and the parts' generator closed."""

    __slots__ = ("abort", "send_timeout")

    def __init__(self, *, send_timeout: float, abort: Callable[[], None] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.send_timeout = send_timeout
        self.abort = abort

    async def send_body(self, send: Send, receive: Receive) -> None:
        stall = StallWatch(self.send_timeout, self.abort)
        try:
            await self.send_parts(stall.watched(send), receive)
        except asyncio.CancelledError:
            if not stall.took():
                raise  # nobody reads the stream any more when it was the watch's: nothing more is sent
        finally:
            stall.stop()
            # A disconnect that cancels the response while it waits on a write, or a client that stopped
            # reading, leaves the parts' generator suspended, holding what it streams from, until it is garbage
            # collected.
            await _close(self.iterator)

    async def send_parts(self, send: Send, receive: Receive) -> None:
        await super().send_body(send, receive)


async def _close(iterator: object) -> None:
    """Close a response's parts: a generator, or Litestar's wrapper of one (a ``ServerSentEvent``'s wraps the
    generator of events, which closing the wrapper leaves suspended)."""
    for parts in (iterator, getattr(iterator, "generator", None), getattr(iterator, "content_async_iterator", None)):
        close = getattr(parts, "aclose", None)
        if close is not None:
            await close()


class _FirstPartFirst(_BoundedStreamResponse):
    __slots__ = ("first",)

    def __init__(self, first: bytes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first = first

    async def send_parts(self, send: Send, receive: Receive) -> None:
        await send({"type": "http.response.body", "body": self.first, "more_body": True})
        await super().send_parts(send, receive)


class _BoundedStream(Stream):
    """A ``Stream`` whose response bounds each send (``_BoundedStreamResponse``): ``_response`` makes it from what
    ``Stream.to_asgi_response`` gives its response, with the request's send bound and connection abort."""

    __slots__ = ()

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        # As Stream.to_asgi_response.
        return self._response(
            send_timeout=send_timeout(request.scope),
            abort=connection_abort(request.scope),
            background=self.background or background,
            content_length=0,
            cookies=self.cookies if cookies is None else itertools.chain(self.cookies, cookies),
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response,
            iterator=self.iterator,
            media_type=get_enum_string_value(media_type or self.media_type or MediaType.JSON),
            status_code=self.status_code or status_code,
        )

    def _response(self, **kwargs: Any) -> ASGIResponse:
        return _BoundedStreamResponse(**kwargs)


class PrimedStream(_BoundedStream):
    """``first``, then the parts of ``rest``; for a client that goes away, Litestar's disconnect handling as usual,
    and ``rest`` is closed when the response ends, however it ends."""

    __slots__ = ("first",)

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(rest, **kwargs)
        self.first = first

    def _response(self, **kwargs: Any) -> ASGIResponse:
        return _FirstPartFirst(self.first, **kwargs)  # the first part handed over


class BoundedServerSentEvent(_BoundedStream, ServerSentEvent):
    """Litestar's ``ServerSentEvent``, each of whose sends is bounded as a ``PrimedStream``'s are: an endless
    stream (the change feed) whose client stopped reading ends instead of holding its listener for ever."""
