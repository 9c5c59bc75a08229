"""A change-feed subscriber that stays connected and stops reading.

Its events wait in the server's ``send`` on the full socket, so the feed's generator never resumes:
not for its heartbeat, nor for the key check that ends a revoked key's feed. Its listener (one of
the few its key may hold, ``REGISTRY_FEED_MAX_LISTENERS_PER_KEY``) and its connection stayed held
for as long as the client kept it open. Each send is bounded (``REGISTRY_STREAM_SEND_TIMEOUT_SECONDS``);
past it the feed ends as for a subscriber that left.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.settings import Settings
from tests.conftest import KeyFactory, http_scope, serve_in_process
from tests.waiting import PATIENCE_SECONDS

SEND_TIMEOUT = 0.05  # the bound under test; the test waits for what it causes, never for the time itself


async def subscribe_and_read_nothing(app: Litestar, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Open the feed as a client that stays connected and reads nothing (``send`` never returns for a streamed
    part); what was sent, once the app returned."""

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("more_body"):
            await asyncio.Event().wait()  # the socket's buffers stay full: the write never completes

    raw_headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    # The patience only keeps a broken build from hanging: the app returns once the bound has passed.
    await asyncio.wait_for(app(http_scope("GET", "/v1/changes", raw_headers), receive, send), PATIENCE_SECONDS)  # type: ignore[arg-type]
    return sent


async def test_a_feed_nobody_reads_ends_after_the_send_bound_and_frees_its_listener(
    settings: Settings, clean_database: AsyncEngine, make_key: KeyFactory
) -> None:
    app = create_app(
        settings.model_copy(update={"stream_send_timeout_seconds": SEND_TIMEOUT, "feed_max_listeners_per_key": 1})
    )
    key = await make_key(Scope.READ, name="subscriber")
    hub = app.state.runtime.feed
    async with serve_in_process(app):
        sent = await subscribe_and_read_nothing(app, key)

        assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 200
        assert sent[1]["more_body"]  # the hello it stalled on, and no end
        assert len(hub) == 0  # its listener is forgotten
        # The key may hold one feed: the stalled one no longer counts (a 429 otherwise).
        again = await subscribe_and_read_nothing(app, key)
        assert again[0]["status"] == 200


async def test_a_feed_that_stalls_mid_stream_is_closed_as_well(
    settings: Settings, clean_database: AsyncEngine, make_key: KeyFactory
) -> None:
    """The bound covers every send, not only the first: a subscriber that read the hello and then stopped."""
    app = create_app(
        settings.model_copy(
            update={
                "stream_send_timeout_seconds": SEND_TIMEOUT,
                "feed_heartbeat_seconds": 0.01,  # parts to send without a change to make
                "feed_max_listeners_per_key": 1,
            }
        )
    )
    key = await make_key(Scope.READ, name="subscriber")
    hub = app.state.runtime.feed
    async with serve_in_process(app):

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        bodies = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal bodies
            if message["type"] == "http.response.body":
                bodies += 1
                if bodies == 3:  # the hello and a heartbeat were read; nothing from then on
                    await asyncio.Event().wait()

        raw_headers = [(name.lower().encode(), value.encode()) for name, value in key.items()]
        await asyncio.wait_for(app(http_scope("GET", "/v1/changes", raw_headers), receive, send), PATIENCE_SECONDS)  # type: ignore[arg-type]

        assert bodies == 3
        assert len(hub) == 0
