"""The outermost ASGI layer: request ids, encoded-slash paths, JSON-only bodies, request limits, metrics.

It wraps Litestar's own handler so that it also sees requests that match no
route (404/405), which Litestar's per-route middleware never does.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import msgspec
import structlog
from litestar import Request
from litestar.enums import ScopeType
from litestar.exceptions import SerializationException
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from registry.lib.errors import (
    ErrorShape,
    FieldError,
    HeadersTooLargeError,
    InvalidInputError,
    MalformedJsonError,
    RegistryError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
    UriTooLongError,
    error_content,
    malformed_json_detail,
)
from registry.lib.logging import request_id_var
from registry.lib.metrics import HttpMetrics

logger = structlog.get_logger("registry.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # fullmatch: a "$" also matches before a final newline
# Generated ids: a random per-process prefix and a counter, unique without a system call per request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON = b"application/json"
ENCODED_SLASH = "%2F"
# An API key pasted into a URL by mistake is redacted before the path is logged.
_KEY_IN_PATH = re.compile(r"prk_[a-z2-9]{12}_[A-Za-z0-9_-]{43}")


def loggable_path(path: str) -> str:
    return _KEY_IN_PATH.sub("prk_[redacted]", path) if "prk_" in path else path


def path_keeping_encoded_slashes(raw_path: bytes) -> str:
    """Decode a raw path, except ``%2F`` inside a segment, which stays encoded.

    Prompt names may contain ``/`` (``support/summarize``); clients encode it as
    ``%2F`` (as GitLab does for project paths) so the name stays one segment.
    """
    text = raw_path.decode("latin-1")
    if text.count("%") == text.count("%2F") + text.count("%2f"):  # the common case: no other escapes
        return text.replace("%2f", ENCODED_SLASH)
    return "/".join(unquote(segment).replace("/", ENCODED_SLASH) for segment in text.split("/"))


def decode_name(name: str) -> str:
    """A ``{name}`` path parameter, with ``%2F`` (kept encoded through routing) back to ``/``."""
    return name.replace(ENCODED_SLASH, "/")


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def _is_form_for(path: str, content_type: bytes, limits: RequestLimits) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/x-www-form-urlencoded" and path.startswith(limits.form_path_prefixes)


UPLOAD_MEDIA_TYPES = (b"text/csv", b"application/x-ndjson", b"application/jsonl", b"application/jsonlines")


def _is_upload_for(path: str, content_type: bytes, limits: RequestLimits) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media in UPLOAD_MEDIA_TYPES and path.startswith(limits.upload_path_prefixes)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Limits checked before a request reaches a route, set below the HTTP server's own.

    The server answers what is over its own limits itself, with an empty body; set lower, these
    limits let the app answer first, with a problem document.
    """

    max_url_bytes: int = 8192
    max_headers: int = 64
    max_header_bytes: int = 16_384
    body_read_timeout: float = 30.0
    # Paths under these prefixes (the console's HTML forms) may also send urlencoded form bodies.
    form_path_prefixes: tuple[str, ...] = ()
    # Paths under these prefixes (dataset uploads) may also send CSV or JSON lines.
    upload_path_prefixes: tuple[str, ...] = ()


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        access_log: bool,
        state: dict[str, Any],
        limits: RequestLimits | None = None,
        error_shape: ErrorShape | None = None,
    ) -> None:
        """``state`` is copied into each request's scope state (the runtime, for handlers to reach cheaply);
        ``error_shape``, the paths whose refusals are answered as their routes' errors are, not as problem+json."""
        self.app = app
        self.error_shape = error_shape
        self.metrics = metrics
        self.access_log = access_log
        self.state = state
        self.limits = limits or RequestLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        raw_path = scope.get("raw_path")
        if raw_path:
            if b"?" in raw_path:  # some clients (httpx's test transport) include the query
                raw_path = raw_path.split(b"?", 1)[0]
            if b"%2F" in raw_path or b"%2f" in raw_path:
                scope["path"] = path_keeping_encoded_slashes(raw_path)

        request_id = ""
        content_type = b""
        has_body = False
        header_count = header_bytes = 0
        for name, value in scope["headers"]:
            header_count += 1
            header_bytes += len(name) + len(value)
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                request_id = candidate if _REQUEST_ID.fullmatch(candidate) else ""
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                has_body = value not in (b"0", b"")
            elif name == b"transfer-encoding":
                has_body = True
        request_id = request_id or f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        scope_state = scope["state"]
        scope_state.update(self.state)
        scope_state["request_id"] = request_id

        status = 0
        request_id_header = (b"x-request-id", request_id.encode())

        def send_with_context(message: Message) -> Awaitable[None]:
            # Not a coroutine: it hands back the server's own ``send``, so each part of a stream (one per token)
            # resumes one coroutine fewer.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            return send(message)

        started = time.perf_counter()
        request_id_token = request_id_var.set(request_id)
        try:
            path, query = scope["path"], scope["query_string"]
            target_bytes = len(raw_path or path) + len(query)
            body_method = has_body and method in _BODY_METHODS
            limits = self.limits
            refusal = (
                None  # the common case, without the call: within the limits, no NUL, no body or a JSON one
                if target_bytes <= limits.max_url_bytes
                and header_count <= limits.max_headers
                and header_bytes <= limits.max_header_bytes
                and (not body_method or content_type == _JSON)
                and "\x00" not in path
                and b"%00" not in query
                else self._refusal(target_bytes, header_count, header_bytes, body_method, content_type, path, query)
            )
            if refusal is not None:
                await send_problem(refusal, scope, send_with_context, self.error_shape)
            else:
                if body_method:
                    receive = _within_deadline(receive, self.limits.body_read_timeout)
                try:
                    await self.app(scope, receive, send_with_context)
                except RequestTimeoutError as exc:
                    if status:  # the response had begun: nothing to answer with
                        raise
                    await send_problem(exc, scope, send_with_context, self.error_shape)
        finally:
            status = status or 500
            elapsed = time.perf_counter() - started
            route = scope.get("path_template") or "unmatched"
            self.metrics.observe(method, route, status, elapsed)
            if self.access_log:
                logger.info(
                    "request",
                    method=method,
                    path=loggable_path(scope["path"]),
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 3),
                )
            request_id_var.reset(request_id_token)

    def _refusal(
        self,
        target_bytes: int,
        header_count: int,
        header_bytes: int,
        body_method: bool,
        content_type: bytes,
        path: str,
        query: bytes,
    ) -> RegistryError | None:
        """The problem a request gets before any route sees it, if any."""
        limits = self.limits
        if target_bytes > limits.max_url_bytes:
            return UriTooLongError(f"the request target is over {limits.max_url_bytes} bytes")
        holding_nul = _holding_nul(path, query)
        if holding_nul:
            # No name, key, cursor or value the API takes may hold one, and the database could not store it: a
            # route would answer a 422 naming no parameter, or a 404 for a name no one can create.
            return InvalidInputError(
                "the request's path or query holds a NUL character (%00)",
                errors=[FieldError(name, "holds a NUL character (%00)") for name in holding_nul],
            )
        if header_count > limits.max_headers or header_bytes > limits.max_header_bytes:
            return HeadersTooLargeError(
                f"send at most {limits.max_headers} header lines of at most {limits.max_header_bytes} bytes in all"
            )
        if (
            body_method
            and not _is_json(content_type)
            and not _is_form_for(path, content_type, limits)
            and not _is_upload_for(path, content_type, limits)
        ):
            return UnsupportedMediaTypeError("request bodies must be JSON: send Content-Type: application/json")
        return None


def _holding_nul(path: str, query: bytes) -> list[str]:
    """The parts of a request target that hold a NUL: ``path``, or a query parameter by its name."""
    parts = ["path"] if "\x00" in path else []
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            parts.append(name.replace("\x00", "%00"))
    return parts


def _within_deadline(receive: Receive, seconds: float) -> Receive:
    """``receive`` that raises ``RequestTimeoutError`` if the whole body has not arrived ``seconds`` from now.

    Servers close connections that are slow to send their headers, not those slow to send a body:
    without this, a client trickling a body holds a connection (and a task) for as long as it likes.
    """
    deadline = asyncio.get_running_loop().time() + seconds
    body_done = False

    async def receive_before_deadline() -> Any:
        nonlocal body_done
        if body_done:
            return await receive()  # after the body, only a disconnect: no deadline
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body did not arrive within {seconds:g} s", headers={"Connection": "close"}
            ) from None
        body_done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receive_before_deadline


async def send_problem(error: RegistryError, scope: Scope, send: Send, shape: ErrorShape | None = None) -> None:
    """Answer with ``error``'s problem document (or ``shape``'s), for requests refused before Litestar sees them."""
    body, media_type = error_content(error, scope["path"], scope["state"].get("request_id"), shape)
    payload = msgspec.json.encode(body)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": error.status_code,
        "headers": [
            (b"content-type", media_type.encode()),
            (b"content-length", str(len(payload)).encode()),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()),
        ],
    }
    body_event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": payload, "more_body": False}
    await send(start)
    await send(body_event)


def json_error_detail(exc: RecursionError | UnicodeDecodeError) -> str:
    """What msgspec's decoder raises outside its ``DecodeError``: a body nested too deep, or not UTF-8."""
    if isinstance(exc, UnicodeDecodeError):
        return f"the body is not valid JSON: it is not UTF-8 (byte {exc.start})"
    return "the body is not valid JSON: it is nested too deeply"


class RegistryRequest(Request[Any, Any, Any]):
    """Litestar's request, with every body it cannot decode reported as malformed JSON (400), not as a 500.

    Litestar turns msgspec's ``DecodeError`` into a 400 but lets through the ``RecursionError`` of a body
    nested about 1,000 levels deep and the ``UnicodeDecodeError`` of one that is not UTF-8. A ``DecodeError``
    is worded here, where the body is at hand, as msgspec words some misleadingly (a leading BOM, a lone surrogate).
    """

    async def json(self) -> Any:
        try:
            return await super().json()
        except (RecursionError, UnicodeDecodeError) as exc:
            raise MalformedJsonError(json_error_detail(exc)) from None
        except SerializationException as exc:
            if not isinstance(exc.__cause__, msgspec.DecodeError):
                raise
            raise MalformedJsonError(malformed_json_detail(await self.body(), exc.__cause__)) from None


class JsonResponse:
    """A JSON body already encoded, sent straight over ASGI.

    The fast path (resolve, render) returns this instead of a Litestar
    ``Response``: building one (layered headers, cookies, encoders) costs more
    than rendering a prompt. Handlers declare their real schema with ``responses=``.
    """

    __slots__ = ("body", "headers", "media_type", "status")

    def __init__(
        self,
        body: bytes,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: bytes = b"application/json",
    ) -> None:
        self.body = body
        self.status = status
        self.media_type = media_type
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.status == 304:
            headers = self.headers
            body = b""
        else:
            headers = [
                (b"content-type", self.media_type),
                (b"content-length", b"%d" % len(self.body)),
                *self.headers,
            ]
            body = self.body
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": self.status, "headers": headers}
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
        await send(start)
        await send(end)
