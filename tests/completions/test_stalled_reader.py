"""A client that opens a streamed completion and then stops reading, without disconnecting.

The server's ``send`` then waits on the full socket, and nothing else wakes the stream: the key's
budget hold, the backend's slot and the upstream connection stayed held for as long as the client
kept the connection open, and no usage was recorded. Each send of a streamed part is bounded
(``REGISTRY_STREAM_SEND_TIMEOUT_SECONDS``); past it the stream ends as for a client that left.

The doors are driven over ASGI with a ``send`` that never returns once the body begins (what a
server's does while the client reads nothing), so the bound decides, not the machine's speed; the
last test does it over a real socket whose client never reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.settings import Settings
from tests.completions.conftest import backend, finished, publish, unique, usage_rows
from tests.completions.fault_server import CHAT, PROMPT_TOKENS, FaultServer
from tests.conftest import AppClient, KeyFactory, http_scope, serve_in_process
from tests.waiting import PATIENCE_SECONDS, eventually_async

SEND_TIMEOUT = 0.05  # the bound under test; the test waits for what it causes, never for the time itself
BUDGET_TOKENS = 50  # below what one completion reserves (its prompt and max_tokens): a hold refuses the next
STALLED_TOKENS = 3  # the backend sends these, then nothing until its connection closes
ADA = {"name": "Ada"}


@dataclass(frozen=True)
class Door:
    path: str
    body: dict[str, Any]


PROMPT = Door("/v1/prompts/greet/complete", {"variables": ADA, "stream": True})
OPENAI = Door("/v1/chat/completions", {"model": "prompt:greet", "messages": [], "variables": ADA, "stream": True})
OTHER = "/v1/prompts/other/complete"  # a whole answer on the same backend, from the same key


@dataclass
class Served:
    client: AppClient
    app: Litestar
    model: str  # the stalled prompt's
    key: dict[str, str]  # an application key with a token budget


async def budgeted_key(
    client: httpx.AsyncClient, admin: dict[str, str], make_key: KeyFactory, tokens: int = BUDGET_TOKENS
) -> tuple[dict[str, str], str]:
    """A new application key with a monthly token budget: its headers and its id."""
    key = await make_key(Scope.READ, name="app")
    key_id: str = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    budget = await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": tokens}, headers=admin)
    assert budget.is_success, budget.text
    return key, key_id


async def publish_both(client: httpx.AsyncClient, admin: dict[str, str], model: str) -> None:
    """``greet``, whose backend stalls after its first tokens, and ``other``, answered at once, on one backend."""
    params = {"max_tokens": 64}
    await publish(client, admin, backend="fault", model=model, params=params, max_context_tokens=4096)
    await publish(
        client, admin, backend="fault", model=unique("ok"), prompt="other", config="other", max_context_tokens=4096
    )


def one_slot_settings(settings: Settings, fault: FaultServer, **overrides: Any) -> Settings:
    """The fault server as a backend of one slot and no queue: a slot still held refuses the next request (503)."""
    url = fault.url  # type: ignore[attr-defined]
    slow = {"max_concurrency": 1, "max_queue": 0, "first_token_timeout": 120, "total_timeout": 120}
    return settings.model_copy(
        update={"backends": {"fault": backend(url, **slow)}, "stream_send_timeout_seconds": SEND_TIMEOUT, **overrides}
    )


@pytest.fixture(params=[True, False], ids=["fast path", "litestar"])
async def served(
    request: pytest.FixtureRequest,
    settings: Settings,
    clean_database: AsyncEngine,
    fault: FaultServer,
    admin: dict[str, str],
    make_key: KeyFactory,
) -> AsyncIterator[Served]:
    app = create_app(one_slot_settings(settings, fault, fast_path=request.param))
    async with serve_in_process(app) as client:
        model = unique(f"stall-after:{STALLED_TOKENS}")
        await publish_both(client, admin, model)
        key, _ = await budgeted_key(client, admin, make_key)
        yield Served(client, app, model, key)


async def read_by_nobody(app: Litestar, door: Door, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Call ``app`` as a server would for a client that sends the request, stays connected and reads nothing:
    ``send`` never returns once the body begins. What was sent, once the app returned."""
    body = json.dumps(door.body).encode()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the socket's buffers stay full: the write never completes

    raw_headers = [(b"content-type", b"application/json")]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    # The patience only keeps a broken build from hanging: the app returns once the bound has passed.
    await asyncio.wait_for(app(http_scope("POST", door.path, raw_headers), receive, send), PATIENCE_SECONDS)  # type: ignore[arg-type]
    return sent


async def assert_freed(client: httpx.AsyncClient, key: dict[str, str]) -> None:
    """The stalled stream's slot and budget hold are free: the key's next completion on that backend (one slot,
    no queue) is answered, not refused for a busy backend (503) or a hold on its budget (429)."""
    metrics = (await client.get("/metrics")).text
    assert 'registry_backend_in_flight{backend="fault"} 0.0' in metrics
    answer = await client.post(OTHER, json={"variables": ADA}, headers=key)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("door", [PROMPT, OPENAI], ids=["prompt", "openai"])
async def test_a_stream_nobody_reads_ends_after_the_send_bound_and_frees_what_it_held(
    served: Served, fault: FaultServer, admin: dict[str, str], admin_engine: AsyncEngine, door: Door
) -> None:
    sent = await read_by_nobody(served.app, door, served.key)

    start = sent[0]
    assert (start["type"], start["status"]) == ("http.response.start", 200)
    assert [message["more_body"] for message in sent[1:]] == [True]  # the part it stalled on, and no end
    assert (await finished(fault, served.model)).disconnected  # the upstream connection was closed
    [row] = await usage_rows(served.client, admin, admin_engine)  # recorded once, as a client that left
    assert (row["status"], row["stream"]) == ("cancelled", True)
    assert (row["input_tokens"], row["output_tokens"]) == (PROMPT_TOKENS, STALLED_TOKENS)
    await assert_freed(served.client, served.key)
    assert len(await usage_rows(served.client, admin, admin_engine)) == 2  # the stalled one was not recorded again


# -- over a real socket

# Tokens the backend sends at once: far more text than the buffers between the registry and a client that reads
# nothing hold (the sockets' below, and the server's own, 64 KiB), so the registry's writes stall.
FLOOD_TOKENS = 100_000
SEND_BUFFER = 8192  # the registry's side of its connections (the kernel doubles it); unset, it grows to megabytes
FLOOD_BUDGET_TOKENS = 10_000_000  # more than the flood spends: the key's next completion is not over its budget


@asynccontextmanager
async def serve_with_small_send_buffers(app: Any) -> AsyncIterator[str]:
    """``tests.conftest.serve_over_http``, on a listening socket whose connections keep a small send buffer."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)  # the accepted connections inherit it
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    await eventually_async(lambda: started(server, task), "the server to start")
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    assert not task.done(), "the server failed to start"
    return server.started


def request_bytes(path: str, body: dict[str, Any], headers: dict[str, str], port: int) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/json"]
    lines += [f"content-length: {len(payload)}", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def test_over_a_socket_a_client_that_stops_reading_frees_the_slot_and_the_hold(
    settings: Settings,
    clean_database: AsyncEngine,
    fault: FaultServer,
    admin: dict[str, str],
    admin_engine: AsyncEngine,
    make_key: KeyFactory,
) -> None:
    app = create_app(one_slot_settings(settings, fault))
    model = unique(f"stall-after:{FLOOD_TOKENS}")
    served = serve_with_small_send_buffers(app)
    async with (
        serve_in_process(app),
        served as url,
        httpx.AsyncClient(base_url=url, timeout=PATIENCE_SECONDS) as client,
    ):
        await publish_both(client, admin, model)
        key, key_id = await budgeted_key(client, admin, make_key, FLOOD_BUDGET_TOKENS)
        port = int(url.rsplit(":", 1)[1])
        reader = socket.socket()
        try:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small too, and never read
            reader.setblocking(False)
            await asyncio.get_running_loop().sock_connect(reader, ("127.0.0.1", port))
            await asyncio.get_running_loop().sock_sendall(reader, request_bytes(PROMPT.path, PROMPT.body, key, port))

            async def backend_closed() -> bool:
                seen = fault.seen(model, CHAT)
                return len(seen) == 1 and seen[0].finished

            await eventually_async(backend_closed, "the registry to close its backend request")
            assert fault.seen(model, CHAT)[0].disconnected
            [row] = await usage_rows(client, admin, admin_engine)  # recorded once, as a client that left
            assert (row["status"], row["stream"], row["input_tokens"]) == ("cancelled", True, PROMPT_TOKENS)
            assert 0 < row["output_tokens"] < FLOOD_TOKENS  # what it relayed before the writes stalled
            # The key's hold is gone: ``released`` returns at once for a key that holds none, and a hold kept
            # by the stalled stream (its only one) would never be released.
            budgets = app.state.runtime.completions.budgets
            await asyncio.wait_for(budgets.released(key_id), PATIENCE_SECONDS)
            await assert_freed(client, key)
        finally:
            reader.close()


# -- the connection of a client that stopped reading


@asynccontextmanager
async def serve_guarded(app: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """``serve_with_small_send_buffers``, with the protocol ``registry serve --server uvicorn`` runs, and uvicorn's
    loggers left to propagate (no logging configuration of its own), so that ``caplog`` sees what it logs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app, http="registry.lib.server:GuardedHttpToolsProtocol", log_config=None, log_level="info", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    await eventually_async(lambda: started(server, task), "the server to start")
    try:
        yield server, listener.getsockname()[1]
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast path", "litestar"])
async def test_the_connection_of_a_client_that_stops_reading_is_dropped_without_an_error(
    settings: Settings,
    clean_database: AsyncEngine,
    fault: FaultServer,
    admin: dict[str, str],
    make_key: KeyFactory,
    caplog: pytest.LogCaptureFixture,
    fast_path: bool,
) -> None:
    """uvicorn closed it once the stream ended, after logging "ASGI callable returned without completing
    response." as an error, and a close waits to flush what the client never reads: the connection stayed, and
    counted against the worker's cap, for as long as the client kept it. It is aborted now, and only the stall's
    warning is logged."""
    app = create_app(one_slot_settings(settings, fault, fast_path=fast_path))
    model = unique(f"stall-after:{FLOOD_TOKENS}")
    caplog.set_level(logging.INFO)
    uvicorn_log = logging.getLogger("uvicorn")
    uvicorn_log.addHandler(caplog.handler)  # whatever propagation an earlier configuration left it
    loop = asyncio.get_running_loop()
    try:
        async with serve_in_process(app), serve_guarded(app) as (server, port):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=PATIENCE_SECONDS) as client:
                await publish_both(client, admin, model)
                key, _ = await budgeted_key(client, admin, make_key, FLOOD_BUDGET_TOKENS)
            # Closed before the server stops: its shutdown waits for its connections to close.
            with socket.socket() as reader:
                reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small too, and never read
                reader.setblocking(False)
                await loop.sock_connect(reader, ("127.0.0.1", port))
                mine = reader.getsockname()

                def held() -> bool:
                    return any(connection.client == mine for connection in server.server_state.connections)

                async def counted() -> bool:
                    return held()

                async def dropped() -> bool:
                    return not held()

                await eventually_async(counted, "the server to count the connection")
                await loop.sock_sendall(reader, request_bytes(PROMPT.path, PROMPT.body, key, port))

                await eventually_async(dropped, "the server to drop the connection of a client that reads nothing")

                async def backend_closed() -> bool:
                    seen = fault.seen(model, CHAT)
                    return len(seen) == 1 and seen[0].finished

                await eventually_async(backend_closed, "the registry to close its backend request")
                assert fault.seen(model, CHAT)[0].disconnected  # the stream ended as for a client that left

                # What the client reads ends with the connection's end: a reset (unsent data was discarded), or its end.
                async def read_to_the_end() -> None:
                    while await loop.sock_recv(reader, 65536):
                        pass

                with contextlib.suppress(ConnectionResetError):
                    await asyncio.wait_for(read_to_the_end(), PATIENCE_SECONDS)
    finally:
        uvicorn_log.removeHandler(caplog.handler)

    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []
    stalls = [record for record in caplog.records if record.name == "registry.lib.streaming"]
    assert [record.levelno for record in stalls] == [logging.WARNING]  # the stall's own warning, once
