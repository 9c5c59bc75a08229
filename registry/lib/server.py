"""Connection limits and timeouts of the HTTP servers ``registry serve`` runs, against hostile clients.

Without them a client with no key takes a worker offline by holding about 1,030 idle
connections: neither server closed a connection that never sent a byte (granian's automatic
HTTP/1-or-2 detection waits for the first bytes without a deadline; uvicorn arms its
keep-alive timer only after a first response), uvicorn had no deadline for headers at all, and
nothing kept a worker's connections under its open-file limit (1,024 by default). So:

- Idle connections, partial headers and keep-alive waits are closed after
  ``header_read_timeout_seconds``: granian runs HTTP/1 only, where hyper's header timer starts
  when the connection opens; uvicorn runs ``GuardedHttpToolsProtocol`` below.
- Slow bodies get 408 after ``body_read_timeout_seconds`` (``RequestContextMiddleware``, both servers).
- A stream whose client stopped reading (``registry.lib.streaming.StallWatch``) aborts its connection under
  uvicorn (the scope's ``registry.abort`` extension): closing it would wait for ever to flush what the client
  never reads, keeping the socket and its place under the cap below.
- Each worker keeps at most ``connection_limit`` connections, at most half the open-file limit
  (raised to its hard limit at start). Past it, uvicorn refuses new ones at once with a 503;
  granian takes no new one until one closes (they wait in the listen backlog), so those it
  serves are never stalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import resource
from typing import Any

import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from registry.lib.errors import (
    PROBLEM_MEDIA_TYPE,
    BadRequestError,
    RegistryError,
    ServiceUnavailableError,
    problem_body,
)
from registry.lib.streaming import ABORT_EXTENSION
from registry.settings import get_settings

# Descriptors a worker needs besides its clients' connections: database and Redis pools, backends, files.
_RESERVED_FILES = 256
# What an unlimited open-file limit counts as (Linux's default ceiling, fs.nr_open).
_UNLIMITED_FILES = 1 << 20


def open_file_limit() -> int:
    """This process's soft open-file limit, an unlimited one counted as ``_UNLIMITED_FILES``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED_FILES if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (workers inherit it); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # a ceiling below the hard limit: keep the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return open_file_limit()


def connection_limit(wanted: int, open_files: int) -> int:
    """Connections per worker: the setting, but never more than half the descriptors left after the reserve."""
    return max(1, min(wanted, (open_files - _RESERVED_FILES) // 2))


def raw_problem(error: RegistryError) -> bytes:
    """A whole HTTP/1.1 response carrying ``error``'s problem document, closing the connection."""
    payload = msgspec.json.encode(problem_body(error))
    head = (
        f"HTTP/1.1 {error.status_code} {error.title}\r\n"
        f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
        f"content-length: {len(payload)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload


_UNPARSABLE = raw_problem(BadRequestError("the request could not be parsed as HTTP/1.1"))
_OVER_CAPACITY = raw_problem(
    ServiceUnavailableError("the server has as many connections open as it keeps; retry shortly")
)


@functools.cache
def _uvicorn_limits() -> tuple[float, int]:
    """(header timeout, connections per worker) for this worker, from its environment."""
    settings = get_settings()
    max_connections = connection_limit(settings.max_connections_per_worker, open_file_limit())
    return settings.header_read_timeout_seconds, max_connections


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a header deadline from the connection's first moment and a cap.

    uvicorn waits for a request's headers for ever (its keep-alive timer is armed only after
    a response and cancelled by the first byte of the next request), accepts connections
    without a bound, and answers what it cannot parse in plain text.
    """

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timeout, self._max_connections = _uvicorn_limits()
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            transport.write(_OVER_CAPACITY)
            transport.close()
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_arrived()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # a request the app will be called for
            self.scope.setdefault("extensions", {})[ABORT_EXTENSION] = {"abort": functools.partial(self._abort, cycle)}

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_headers()  # the keep-alive wait for the next request

    def _abort(self, cycle: Any) -> None:
        """Drop the connection at once, unsent data and all, while ``cycle``'s response is under way: its client
        stopped reading. uvicorn would close it once the app returns, after logging an unfinished response as an
        error, and a close waits to flush what the client never reads: the connection would stay, and count,
        until the client went away."""
        if cycle is not self.cycle or cycle.response_complete or self.transport.is_closing():
            return
        cycle.disconnected = True  # the app's return is then no unfinished response; connection_lost follows
        self.transport.abort()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_UNPARSABLE)
        self.transport.close()

    def _await_headers(self) -> None:
        """Start the header deadline unless it runs already (a request's first byte does not extend it)."""
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._close_waiting)

    def _headers_arrived(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _close_waiting(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
