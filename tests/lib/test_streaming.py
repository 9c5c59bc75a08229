"""A primed stream sends its first part right behind the headers, then the rest; a client that goes stops it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, post
from litestar.response import Stream

from registry.lib.streaming import PrimedStream


async def rest_of_stream(parts: list[bytes], closed: list[bool]) -> AsyncIterator[bytes]:
    try:
        for part in parts:
            yield part
            await asyncio.sleep(0)
    finally:
        closed.append(True)


async def serve_once(app: Litestar, disconnect_after: int | None = None) -> list[str]:
    """What the app sends and when it listens, in order: 'start', 'body:<bytes>', 'receive'."""
    log: list[str] = []
    delivered = False
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        log.append("receive")
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            content_type = dict(message["headers"]).get(b"content-type", b"").decode()
            log.append(f"start:{content_type.split(';')[0]}")
        elif message["type"] == "http.response.body":
            log.append(f"body:{message['body'].decode()}")
            bodies = sum(entry.startswith("body:") for entry in log)
            if not message.get("more_body") or bodies == disconnect_after:
                gone.set()

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
    return log


def app_returning(response: Any) -> Litestar:
    @post("/stream", status_code=200)
    async def stream() -> Stream:
        return response

    return Litestar([stream])


async def test_the_first_part_leaves_before_the_response_waits_on_the_client() -> None:
    closed: list[bool] = []
    primed = PrimedStream(b"first", rest_of_stream([b"second", b"third"], closed), media_type="text/event-stream")

    log = await serve_once(app_returning(primed))

    assert log[:3] == ["start:text/event-stream", "body:first", "receive"]
    assert [entry for entry in log if entry.startswith("body:")] == ["body:first", "body:second", "body:third", "body:"]
    assert closed == [True]


async def test_a_plain_stream_waits_one_turn_before_its_first_part() -> None:
    """Litestar's own order, which the primed stream exists to avoid (if Litestar changes it, so can we)."""
    closed: list[bool] = []
    plain = Stream(rest_of_stream([b"first", b"second"], closed), media_type="text/event-stream")

    log = await serve_once(app_returning(plain))

    assert log[:3] == ["start:text/event-stream", "receive", "body:first"]


async def test_a_client_that_goes_away_stops_the_rest_and_closes_it() -> None:
    closed: list[bool] = []
    parts = [f"part {n}".encode() for n in range(1000)]
    primed = PrimedStream(b"first", rest_of_stream(parts, closed), media_type="text/event-stream")

    log = await serve_once(app_returning(primed), disconnect_after=3)

    sent = [entry for entry in log if entry.startswith("body:")]
    assert sent[0] == "body:first"
    assert len(sent) < 100
    assert closed == [True]
