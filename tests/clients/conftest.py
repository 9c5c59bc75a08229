"""The Python client against a live registry: real sockets, real PostgreSQL and Redis.

The registry runs under uvicorn in a thread of its own, so a sync client may block
the test while the service answers, and a test can stop the service under a
running client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.api import path
from tests.completions.fault_server import FaultServer
from tests.conftest import fresh_app
from tests.waiting import PATIENCE_SECONDS, eventually


class ThreadedServer:
    """uvicorn in a thread of its own, on a port that stays the same across restarts."""

    def __init__(self, app: Any, *, lifespan: str = "on") -> None:
        self.app = app
        self.lifespan = lifespan
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Serve, once the app has started; a start that fails leaves no thread or socket behind."""
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without
        # it every answer written in two parts waits ~40 ms for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket = sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                self.app,
                lifespan=self.lifespan,
                log_level="critical",
                ws="none",
                loop="asyncio",
                timeout_graceful_shutdown=0.5,
                access_log=False,
            )
            self._server = server = uvicorn.Server(config)
            self._thread = thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            # How long a start takes is the machine's business (seconds on a busy one): wait for it to happen.
            eventually(lambda: server.started or not thread.is_alive(), "the server starting")
            assert server.started, "the server stopped while starting"
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        """Stop serving and free the port; the socket is closed even when the server does not stop."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        try:
            if server is not None and thread is not None:
                server.should_exit = True
                thread.join(PATIENCE_SECONDS)  # a hang guard only: a stop takes well under a second
                assert not thread.is_alive(), "the server did not stop"
        finally:
            if sock is not None:
                sock.close()


@dataclass
class Live:
    """A registry serving on a real port; ``admin`` is an HTTP client with an admin key."""

    key: str
    settings: Settings
    admin: httpx.Client = field(init=False)
    server: ThreadedServer = field(init=False)
    # The app served now; its routes go back to the tests' pool once its server has stopped.
    _app: contextlib.ExitStack = field(init=False, default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        self.server = ThreadedServer(self._app.enter_context(fresh_app(self.settings)))
        self.server.start()
        headers = {"Authorization": f"Bearer {self.key}"}
        # A hang guard only: setting up content may take seconds on a busy machine (httpx's default is 5).
        self.admin = httpx.Client(base_url=self.url, headers=headers, timeout=PATIENCE_SECONDS)

    @property
    def url(self) -> str:
        return self.server.url

    def hold_the_minute(self) -> None:
        """Hold the rate limiter's calendar clock inside one minute: a per-minute limit never resets mid-test."""
        self.server.app.state.runtime.rate_limiter.clock = lambda: 1_800_000_030.0

    def stop(self) -> None:
        self.server.stop()
        self._app.close()

    def restart(self) -> None:
        """Stop, then serve a new instance of the registry on the same port."""
        port = self.server.port
        self.stop()
        self.server = ThreadedServer(self._app.enter_context(fresh_app(self.settings)))
        self.server.port = port
        self.server.start()

    # -- setting up content, the way a caller would

    def ok(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (200, 201, 207), response.text
        body: dict[str, Any] = response.json()
        return body

    def prompt(self, name: str, *versions: dict[str, Any], production: int | None = 1, **fields: Any) -> None:
        """Create ``name`` with ``versions`` (content bodies); put ``production`` in production."""
        self.ok(self.admin.post("/v1/prompts", json={"name": name, **fields}))
        for content in versions:
            self.ok(self.admin.post(f"/v1/prompts/{path(name)}/versions", json=content))
        if production is not None:
            self.promote(name, production)

    def promote(self, name: str, version: int, to: str = "production") -> None:
        current = self.ok(self.admin.get(f"/v1/prompts/{path(name)}/versions", params={"state": to}))["items"]
        body = {"to": to, "expected_current": current[0]["version"] if current else None}
        self.ok(self.admin.post(f"/v1/prompts/{path(name)}/versions/{version}/promote", json=body))


def text(template: str) -> dict[str, Any]:
    return {"kind": "text", "template": template}


LiveFactory = Callable[..., Live]


@pytest.fixture
def live_registry(settings: Settings, clean_database: AsyncEngine, admin: dict[str, str]) -> Iterator[LiveFactory]:
    """Start the registry (with settings overrides) on a free port; stopped after the test."""
    # Every registry is stopped even when stopping another fails: one left serving (its jobs, its database
    # connections) would break the tests that come after this one.
    with contextlib.ExitStack() as stopping:

        def start(**overrides: Any) -> Live:
            live = Live(admin["Authorization"].removeprefix("Bearer "), settings.model_copy(update=overrides))
            stopping.callback(live.stop)
            stopping.callback(live.admin.close)
            return live

        yield start


@pytest.fixture
def live(live_registry: LiveFactory) -> Live:
    return live_registry()


@dataclass
class Recorder:
    """Counts what a client sends, by method and path, and the statuses it gets back.

    ``requests`` counts answered requests; ``attempts`` every request the client tried
    to send, answered or not, with the thread that sent it (the caller's, or a
    background refresh's).
    """

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    attempts: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tried(self, request: httpx.Request) -> None:
        with self.lock:
            self.attempts.append((f"{request.method} {request.url.path}", threading.get_ident()))

    def tries(self, prefix: str, *, thread: int | None = None) -> int:
        """Requests tried whose method and path start with ``prefix``, from ``thread`` if given."""
        with self.lock:
            return sum(1 for key, sender in self.attempts if key.startswith(prefix) and thread in (None, sender))

    def saw(self, request: httpx.Request, status: int | None) -> None:
        key = f"{request.method} {request.url.path}"
        with self.lock:
            self.requests[key] += 1
            if status is not None:
                self.statuses[f"{key} {status}"] += 1

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(n for key, n in self.requests.items() if key.startswith(prefix))


class RecordingTransport(httpx.HTTPTransport):
    """The real transport, counting requests; ``fail_after`` drops answers of requests it names."""

    def __init__(self, recorder: Recorder, lose_answer: Callable[[httpx.Request], bool] | None = None) -> None:
        super().__init__()
        self.recorder = recorder
        self.lose_answer = lose_answer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.recorder.tried(request)
        response = super().handle_request(request)
        self.recorder.saw(request, response.status_code)
        if self.lose_answer is not None and self.lose_answer(request):
            response.close()
            raise httpx.ReadError("the answer was lost on the way back", request=request)
        return response


class AsyncRecordingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.recorder.tried(request)
        response = await super().handle_async_request(request)
        self.recorder.saw(request, response.status_code)
        return response


@pytest.fixture(scope="session")
def fault() -> Iterator[FaultServer]:
    """An OpenAI-compatible backend that streams on cue (see tests/completions/fault_server.py)."""
    fault = FaultServer()
    server = ThreadedServer(fault, lifespan="off")
    fault.url = server.start()  # type: ignore[attr-defined]
    yield fault
    server.stop()
