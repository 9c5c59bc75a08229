"""A client that goes away stops the work of its request: while a handler waits, and while a stream writes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from registry.lib.disconnect import ClientDisconnectedError, cancel_on_disconnect
from registry.lib.streaming import PrimedStream
from tests.lib.test_streaming import app_returning, rest_of_stream


class Client:
    """The ASGI receive channel of a request whose body was read: the next message is the disconnect."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.receives = 0

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


class Work:
    """A long piece of work that notes how it ended."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.ending = ""

    async def __call__(self) -> str:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.ending = "cancelled"
            raise
        self.ending = "finished"
        return "answer"


async def test_work_that_finishes_first_returns_its_result_and_stops_listening() -> None:
    client, work = Client(), Work()
    work.release.set()

    result = await cancel_on_disconnect(client.receive, work())

    assert result == "answer"
    assert work.ending == "finished"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_disconnect_cancels_the_work_and_raises_client_disconnected() -> None:
    client, work = Client(), Work()

    async def handler() -> str:
        return await cancel_on_disconnect(client.receive, work())

    task = asyncio.create_task(handler())
    await work.started.wait()
    client.gone.set()

    with pytest.raises(ClientDisconnectedError) as raised:
        await task
    assert work.ending == "cancelled"  # its cleanup ran before the handler answered
    assert raised.value.status_code == 499
    assert task.cancelling() == 0  # the disconnect's cancellation was taken back, not left pending


async def test_a_cancellation_from_outside_is_not_taken_for_a_disconnect() -> None:
    client, work = Client(), Work()

    async def handler() -> str:
        return await cancel_on_disconnect(client.receive, work())

    task = asyncio.create_task(handler())
    await work.started.wait()
    task.cancel()  # a server shutting down

    with pytest.raises(asyncio.CancelledError):
        await task
    assert work.ending == "cancelled"


async def test_a_stream_stopped_while_it_writes_closes_the_rest_at_once() -> None:
    """A disconnect that cancels the response inside a slow write still closes what it streams from."""
    closed: list[bool] = []
    primed = PrimedStream(b"first", rest_of_stream([b"second", b"third"], closed), media_type="text/event-stream")
    app = app_returning(primed)
    client = Client()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await client.receive()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"] == b"second":
            client.gone.set()  # the client goes while this write waits on it
            await asyncio.Event().wait()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)

    assert closed == [True]
