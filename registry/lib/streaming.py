"""A streamed response whose first part is already in hand and leaves right behind the headers.

Litestar sends every part of a ``Stream`` from a task it starts after the headers, so
the first part waits one turn of the event loop (about 0.2 ms in process on our
benchmark machine), and a server may write the headers and that part separately.
A completion's first part is its first token, taken before the response begins (so
that a failure before it still gets its own status), so nothing is gained by that
wait: this response sends it from the task that sent the headers.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from litestar.enums import MediaType
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.utils.helpers import get_enum_string_value

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.connection import Request
    from litestar.datastructures import Cookie
    from litestar.response.base import ASGIResponse
    from litestar.types import Receive, Send, TypeEncodersMap


class _FirstPartFirst(ASGIStreamingResponse):
    __slots__ = ("first",)

    def __init__(self, first: bytes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first = first

    async def send_body(self, send: Send, receive: Receive) -> None:
        try:
            await send({"type": "http.response.body", "body": self.first, "more_body": True})
            await super().send_body(send, receive)
        finally:
            # A disconnect that cancels the response while it waits on a write leaves the parts'
            # generator suspended, holding what it streams from, until it is garbage collected.
            close = getattr(self.iterator, "aclose", None)
            if close is not None:
                await close()


class PrimedStream(Stream):
    """``first``, then the parts of ``rest``; for a client that goes away, Litestar's disconnect handling as usual,
    and ``rest`` is closed when the response ends, however it ends."""

    __slots__ = ("first",)

    def __init__(self, first: bytes, rest: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(rest, **kwargs)
        self.first = first

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
        # As Stream.to_asgi_response, with the first part handed over.
        return _FirstPartFirst(
            self.first,
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
