"""A body that stops arriving gets 408 and a closed connection, on the render fast path and through Litestar.

The request is driven over ASGI with a body whose second part never comes, so the deadline decides,
not the machine's speed (``test_connection_exhaustion.py`` does the same over real sockets).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.settings import Settings
from tests.api import Headers
from tests.conftest import http_scope, serve_in_process

# Only a guard against a hang: the deadline under test is REGISTRY_BODY_READ_TIMEOUT_SECONDS=0.2.
GUARD_SECONDS = 30


async def send_a_stalled_body(
    app: Litestar, method: str, path: str, headers: Headers
) -> tuple[int, dict[str, str], Any]:
    """Send the headers and the first byte of a body whose rest never arrives; the answer's status, headers, body."""
    parts_sent = 0
    stalled = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal parts_sent
        parts_sent += 1
        if parts_sent == 1:
            return {"type": "http.request", "body": b"{", "more_body": True}
        await stalled.wait()  # the client stopped sending
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw_headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    scope = http_scope(method, path, raw_headers)
    await asyncio.wait_for(app(scope, receive, send), GUARD_SECONDS)  # type: ignore[arg-type]
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    response_headers = {name.decode(): value.decode() for name, value in start["headers"]}
    return start["status"], response_headers, json.loads(body)


@pytest.mark.parametrize(
    "path", ["/v1/prompts/p/render", "/v1/prompts", "/v1/events"], ids=["render fast path", "litestar", "events"]
)
async def test_a_body_that_stops_arriving_is_408_and_closes_the_connection(
    settings: Settings, clean_database: AsyncEngine, admin: Headers, path: str
) -> None:
    app = create_app(settings.model_copy(update={"body_read_timeout_seconds": 0.2}))
    async with serve_in_process(app):
        status, headers, body = await send_a_stalled_body(app, "POST", path, admin)
    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert body["type"] == "/problems/request_timeout"
    assert body["status"] == 408
