"""What the routes served in front of Litestar share: their discovery, the body's reading, problems and streams.

A few routes carry nearly all of the traffic (resolve, render, complete and the
OpenAI-compatible door). Litestar's per-request work for a route (routing, a
``Request``, the signature model, the ``before_request`` hook, the response
object, and for a stream a task group that listens for the disconnect) costs
more CPU than serving such a request from the caches. Their fast paths
(``registry.prompts.fast_path``, ``registry.completions.fast_path``,
``registry.openai_compat.fast_path``) answer the well-formed common case
directly over ASGI and hand anything else to Litestar, body included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import msgspec
from litestar import Litestar
from litestar._asgi.utils import is_valid_host
from litestar.enums import ScopeType
from litestar.routes import HTTPRoute
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, ReceiveMessage, Scope, Send

from registry.lib.disconnect import DisconnectWatch
from registry.lib.errors import PROBLEM_MEDIA_TYPE, RequestTimeoutError, problem_body, translate_and_log
from registry.lib.http import JsonResponse
from registry.lib.streaming import DEFAULT_SEND_TIMEOUT, StallWatch, connection_abort, send_timeout

_PROBLEM_MEDIA_TYPE = PROBLEM_MEDIA_TYPE.encode()
SSE_MEDIA_TYPE = "text/event-stream"
# A stream's content type as Litestar writes it for ``media_type=SSE_MEDIA_TYPE``.
_SSE_CONTENT_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")


@dataclass(frozen=True)
class FrontRoute:
    """A Litestar route a fast path stands in for: its path, its template in metrics, and its handler's ``opt``
    (where the scope it requires is declared: ``registry.auth.access.required_scope``)."""

    path: str
    template: str
    opt: Mapping[str, Any]


def front_routes(litestar: Litestar, expected: dict[str, str]) -> dict[str, FrontRoute]:
    """The routes of ``expected`` (operation id -> path); refuses to start if one moved or is gone.

    A fast path answers for its Litestar handler, which keeps the OpenAPI document, the
    scope and the requests the fast path hands on; if the handler's path changed, the
    fast path would serve a route the app no longer has.
    """
    found: dict[str, FrontRoute] = {}
    for route in litestar.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                if handler.operation_id in expected:
                    found[str(handler.operation_id)] = FrontRoute(route.path, route.path_format, handler.opt)
    for operation, path in expected.items():
        if operation not in found or found[operation].path != path:
            raise RuntimeError(f"the fast path serves {operation} at {path}, which the app no longer routes")
    return found


def plain_request(scope: Scope) -> bool:
    """An HTTP request on the app's root whose headers Litestar would accept as is (its Host check)."""
    if scope["type"] != ScopeType.HTTP or scope.get("root_path"):
        return False
    for header, value in scope["headers"]:
        if header == b"host":
            return is_valid_host(value)
    return True


def _replaying(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """``receive`` that first hands back the messages already read, for a request passed on to Litestar."""
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def read_body(receive: Receive, max_bytes: int) -> tuple[bytes, None] | tuple[None, Receive]:
    """The whole body; or, over ``max_bytes``, on a disconnect or past the body's deadline, the ``receive``
    to hand the request on with, which gives what was read first, then what stopped the read.

    A body that misses its deadline (``registry.lib.http``) is handed on too: Litestar checks the key
    before it reads a body, and its read then meets the same ``RequestTimeoutError``. A body sent in
    many small messages is joined as it comes: kept as messages, each byte would hold a few hundred.
    """
    buffer: bytearray | None = None  # a body in several messages
    while True:
        try:
            message = await receive()
        except RequestTimeoutError as exc:
            return None, _replaying(_read_so_far(buffer, more_body=True), _failing(exc))
        if message["type"] != "http.request":
            return None, _replaying([*_read_so_far(buffer, more_body=True), message], receive)
        chunk = message.get("body", b"")
        more_body = message.get("more_body", False)
        if buffer is None:
            if not more_body and len(chunk) <= max_bytes:
                return chunk, None  # the common case: the whole body in one message
            buffer = bytearray()
        buffer += chunk
        if len(buffer) > max_bytes:
            return None, _replaying(_read_so_far(buffer, more_body=more_body), receive)
        if not more_body:
            return bytes(buffer), None


def _read_so_far(buffer: bytearray | None, *, more_body: bool) -> list[ReceiveMessage]:
    """What was read of a body, as the one message to replay before the rest."""
    if buffer is None:
        return []
    return [{"type": "http.request", "body": bytes(buffer), "more_body": more_body}]


def _failing(error: Exception) -> Receive:
    async def fail() -> Any:
        raise error

    return fail


_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError)
_Request = TypeVar("_Request")


async def read_decoded(
    receive: Receive, max_bytes: int, decode: Callable[[bytes], _Request]
) -> tuple[_Request, None] | tuple[None, Receive]:
    """The body decoded strictly by ``decode``; or, for any body it refuses (too large, malformed, too
    slow, the client gone), the ``receive`` to hand the request on to Litestar with, body unread.

    Litestar then answers with the problem such a body gets there, so a fast path never words one itself.
    """
    body, handoff = await read_body(receive, max_bytes)
    if body is None:
        return None, cast(Receive, handoff)
    try:
        return decode(body), None
    except _DECODE_ERRORS:
        whole: ReceiveMessage = {"type": "http.request", "body": body, "more_body": False}
        return None, _replaying([whole], receive)


def problem_document(exc: Exception, scope: Scope) -> tuple[Any, dict[str, str], int]:
    """The problem Litestar's exception handler (``exception_to_response``) would answer: body, headers, status."""
    error = translate_and_log(exc, scope["path"])
    document = problem_body(error, instance=scope["path"], request_id=scope["state"].get("request_id"))
    return document, error.headers, error.status_code


def problem_response(exc: Exception, scope: Scope) -> JsonResponse:
    document, headers, status = problem_document(exc, scope)
    return JsonResponse(msgspec.json.encode(document), status=status, headers=headers, media_type=_PROBLEM_MEDIA_TYPE)


def encode_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


@dataclass(frozen=True, slots=True)
class Streamed:
    """A server-sent event stream that has its first part: sent with ``headers``, then the parts of ``rest``."""

    first: bytes
    rest: AsyncIterator[bytes]
    headers: dict[str, str]


async def serve(
    scope: Scope,
    receive: Receive,
    send: Send,
    respond: Callable[[DisconnectWatch], Awaitable[JsonResponse | Streamed]],
    failed: Callable[[Exception], JsonResponse],
) -> None:
    """Answer a request whose body has been read: ``respond``'s answer, or ``failed``'s for what it raised.

    ``respond`` runs under a ``DisconnectWatch`` (which it may pass to ``DisconnectWatch.until``), and the
    same watch covers the stream it returns. Once a stream has begun, a failure propagates as it would
    under Litestar: nothing else can be sent.
    """
    watch = DisconnectWatch(receive)
    try:
        answer = await respond(watch)
    except Exception as exc:
        answer = failed(exc)
    else:
        if isinstance(answer, Streamed):
            headers = [_SSE_CONTENT_TYPE, *encode_headers(answer.headers)]
            await send_stream(
                send,
                watch,
                headers,
                answer.first,
                answer.rest,
                send_timeout=send_timeout(scope),
                abort=connection_abort(scope),
            )
            return
    finally:
        watch.stop()
    await answer(scope, receive, send)


async def send_stream(
    send: Send,
    watch: DisconnectWatch,
    headers: Iterable[tuple[bytes, bytes]],
    first: bytes,
    rest: AsyncIterator[bytes],
    *,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    abort: Callable[[], None] | None = None,
) -> None:
    """A 200 stream: the headers and ``first`` at once, then each part of ``rest`` as it comes.

    As ``registry.lib.streaming.PrimedStream`` under Litestar: a client that goes away
    (``watch`` cancels this task), or that stops reading so that one send waits ``send_timeout``
    seconds (``registry.lib.streaming.StallWatch`` cancels it, and drops the connection with ``abort``), ends the
    stream quietly, and ``rest`` is closed however the stream ends, which closes the upstream connection it reads
    from.

    The parts of ``rest`` and the body's end are sent from a task of their own, which this one awaits (a
    cancellation of this task reaches it). Each wake-up of a stream (an upstream read, once per token) resumes
    the chain of coroutines that awaits it: in this task that is every ASGI layer the request came through (the
    server's, Litestar's, the middleware, the fast paths), in its own only the send loop and the stream's
    generators. The end leaves from there because this task resumes only a turn of the event loop after that one
    ends, a turn that, under load, every other stream's token shares.
    """
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 200, "headers": list(headers)}
    stall = StallWatch(send_timeout, abort)
    try:
        if watch.disconnected:
            return  # gone before the first token was sent: nobody to stream to
        await stall.send(send, start)
        await stall.send(send, {"type": "http.response.body", "body": first, "more_body": True})
        await asyncio.create_task(_send_rest(send, watch, stall, rest))
    except asyncio.CancelledError:
        # The client left, or stopped reading (a send waited past the bound): either ends the stream quietly.
        if not (watch.left() or stall.took()):
            raise
    finally:
        stall.stop()
        watch.stop()
        await rest.aclose()  # type: ignore[attr-defined]


async def _send_rest(send: Send, watch: DisconnectWatch, stall: StallWatch, rest: AsyncIterator[bytes]) -> None:
    """The parts of ``rest`` as they come, then the body's end; each send counted for ``stall`` (inline: this
    loop runs once per token)."""
    async for part in rest:
        body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": part, "more_body": True}
        stall.sends += 1
        await send(body)
        stall.sends += 1
    watch.stop()  # the response is whole: a disconnect from here on cancels nothing
    await stall.send(send, {"type": "http.response.body", "body": b"", "more_body": False})
