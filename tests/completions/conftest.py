"""Fixtures for completions: a real vLLM (CPU), our fault server, and the registry on a real port.

The registry runs under uvicorn in a thread so tests talk to it over real HTTP:
streams arrive as they are sent and a client can hang up mid-stream, which an
in-memory test client cannot show.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.upstream import UpstreamClient
from registry.prompts.catalog import VariantRouter
from registry.settings import BackendSettings, Settings
from tests.completions.fault_server import CHAT, FaultServer, SeenRequest
from tests.conftest import free_port, fresh_app


@contextmanager
def serve_in_thread(app: Any, *, lifespan: str = "on") -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port; yields its base URL."""
    # An explicit protocol, so asyncio recognises a TCP socket and sets TCP_NODELAY on its connections
    # (without it every small response waits for a delayed ACK, about 40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_level="critical",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=2,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="session")
def fault() -> Iterator[FaultServer]:
    server = FaultServer()
    with serve_in_thread(server, lifespan="off") as url:
        server.url = url  # type: ignore[attr-defined]
        yield server


EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # as scripts/vllm-cpu.sh start-embeddings serves it


@pytest.fixture(scope="session")
def closed_port_url() -> str:
    """An address where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def blackhole_url() -> Iterator[str]:
    """A listener that never accepts, with its backlog full: new connections hang until they time out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    for filler in fillers:
        filler.close()
    listener.close()


def backend(url: str, **options: Any) -> BackendSettings:
    fast = {"connect_timeout": 1.0, "first_token_timeout": 5.0, "total_timeout": 10.0, "retry_base_delay": 0.01}
    return BackendSettings(url=url, **(fast | options))


RegistryFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def registry(settings: Settings, clean_database: AsyncEngine) -> AsyncIterator[RegistryFactory]:
    """Start the registry with the given backends (and settings); returns a client bound to it."""
    stack: list[Any] = []
    apps = ExitStack()  # each app's routes go back to the tests' pool once its server has stopped

    async def factory(
        backends: dict[str, BackendSettings],
        *,
        router: VariantRouter | None = None,
        clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> httpx.AsyncClient:
        app = apps.enter_context(fresh_app(settings.model_copy(update={"backends": backends, **overrides})))
        app.state.runtime.prompts.router = router
        if clock is not None:
            # The backends' breakers read this clock instead of the machine's, so a test moves time itself.
            completions = app.state.runtime.completions
            completions.upstream = UpstreamClient(
                completions.upstream.http, completions.settings.backends, completions.metrics, clock=clock
            )
        served = serve_in_thread(app)
        url = served.__enter__()
        client = httpx.AsyncClient(base_url=url, timeout=30)
        stack.append((served, client))
        return client

    yield factory
    for served, client in reversed(stack):
        await client.aclose()
        served.__exit__(None, None, None)
    apps.close()


def unique(behaviour: str) -> str:
    """A fault-server model name whose counters no other test shares."""
    return f"{behaviour}/{uuid.uuid4().hex[:8]}"


async def publish(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    backend: str,
    model: str,
    prompt: str | None = "greet",
    config: str = "cfg",
    kind: str = "chat",
    params: dict[str, Any] | None = None,
    max_context_tokens: int | None = None,
    fallback: dict[str, Any] | None = None,
    prices: tuple[float, float] = (0.0, 0.0),
    store_io: bool = False,
    template: str = "Say hello to {{ name }}.",
    create_config: bool = True,
) -> None:
    """Create a config and a prompt linked to it, both in production."""

    async def ok(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    if create_config:
        await ok(await http.post("/v1/configs/", json={"name": config}, headers=headers))
    version = await ok(
        await http.post(
            f"/v1/configs/{config}/versions",
            json={
                "backend": backend,
                "model": model,
                "params": params if params is not None else {"max_tokens": 8},
                "max_context_tokens": max_context_tokens,
                "input_price_per_mtok": prices[0],
                "output_price_per_mtok": prices[1],
                **({"fallback": fallback} if fallback else {}),
            },
            headers=headers,
        )
    )
    number = version["version"]
    await ok(
        await http.post(
            f"/v1/configs/{config}/versions/{number}/promote",
            json={"to": "production", "expected_current": None if number == 1 else number - 1},
            headers=headers,
        )
    )
    if prompt is None:
        return
    await ok(await http.post("/v1/prompts/", json={"name": prompt}, headers=headers))
    content: dict[str, Any] = (
        {"kind": "chat", "messages": [{"role": "user", "content": template}]}
        if kind == "chat"
        else {"kind": "text", "template": template}
    )
    await ok(
        await http.post(
            f"/v1/prompts/{prompt}/versions",
            json={**content, "config": {"name": config, "version": number}},
            headers=headers,
        )
    )
    await ok(
        await http.post(
            f"/v1/prompts/{prompt}/versions/1/promote",
            json={"to": "production", "expected_current": None},
            headers=headers,
        )
    )
    if store_io:
        await ok(await http.patch(f"/v1/prompts/{prompt}", json={"store_io": True}, headers=headers))


def parse_sse(raw: str) -> list[tuple[str, Any]]:
    """Our stream as (event, data) pairs."""
    import json

    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


async def usage_rows(client: httpx.AsyncClient, admin: dict[str, str], engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every usage record (GET /v1/usage writes the buffer first)."""
    assert (await client.get("/v1/usage", headers=admin)).status_code == 200
    query = text(
        "SELECT status, error_type, input_tokens, output_tokens, cost, stream, fallback_used, config "
        "FROM completions ORDER BY id"
    )
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in (await connection.execute(query)).all()]


async def until(condition: Callable[[], Awaitable[bool]], what: str, seconds: float = 10) -> None:
    """Wait for ``condition()`` (the servers run on other threads' loops, so poll); fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.02)


async def until_taken(client: httpx.AsyncClient, backend: str = "fault", requests: int = 1) -> None:
    """Wait until the registry has seen ``backend`` take ``requests`` requests (answer 200) that have no token yet.

    A backend that got a request has not taken it until the registry reads its 200: a caller leaving before then
    leaves a request never taken (not charged), one leaving after leaves a prompt the backend read (charged). So a
    test that leaves during the prefill waits for this, not for the request to reach the backend.
    """
    series = f'registry_backend_awaiting_first_token{{backend="{backend}"}} {float(requests)}'

    async def taken() -> bool:
        return series in (await client.get("/metrics")).text

    await until(taken, f"{backend} to take {requests} request(s)")


async def finished(fault: FaultServer, model: str) -> SeenRequest:
    """The one completion request the fault server saw for ``model``, once its handler has returned."""

    async def done() -> bool:
        seen = fault.seen(model, CHAT)
        return len(seen) == 1 and seen[0].finished

    await until(done, "the backend's request to end")
    return fault.seen(model, CHAT)[0]


WAIT = 30.0  # seconds before a test that waits on an event gives up (fails), never a pause


class HeldBackend:
    """The fault server's answers, each chat completion held at the door until ``release`` is set; and
    ``/v1/embeddings`` with one fixed vector, so the semantic cache runs without a model."""

    def __init__(self) -> None:
        self.fault = FaultServer()
        self.arrived = threading.Event()  # a chat completion is waiting at the door
        self.release = threading.Event()
        self.url = ""  # where it serves, once the ``held`` fixture started it

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/v1/embeddings":
            while (await receive()).get("more_body"):
                pass
            body = json.dumps({"data": [{"embedding": [1.0, 0.0, 0.0]}]}).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["path"] == CHAT:
            self.arrived.set()
            assert await asyncio.to_thread(self.release.wait, WAIT), "never released"
        await self.fault(scope, receive, send)


@pytest.fixture
def held() -> Iterator[HeldBackend]:
    server = HeldBackend()
    with serve_in_thread(server, lifespan="off") as url:
        server.url = url
        yield server
    server.release.set()
