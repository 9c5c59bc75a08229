"""The change feed: clients learn of promotions within moments, from any replica."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
from litestar import Litestar

from registry.app import create_app
from registry.feed.hub import QUEUE_SIZE, FeedItem, Listener
from registry.lib.changes import Change
from registry.settings import Settings
from tests.api import Headers, create_prompt, create_version, promote
from tests.conftest import serve_in_process, serve_over_http
from tests.waiting import PATIENCE_SECONDS


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, object]]]:
    event = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))


async def test_a_promotion_on_another_replica_reaches_the_feed(
    settings: Settings, admin: Headers, app: Litestar
) -> None:
    other = create_app(settings)
    async with serve_in_process(app) as writer, serve_in_process(other), serve_over_http(other) as base:
        await create_prompt(writer, admin, "greeting")
        await create_version(writer, admin, "greeting")
        async with (
            httpx.AsyncClient(base_url=base, headers=admin) as http,
            http.stream("GET", "/v1/changes") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = events(response)
            assert (await anext(stream))[0] == "hello"
            await promote(writer, admin, "greeting", 1)
            # Only a hang guard: the event's arrival is the behaviour, not how soon it came.
            event, data = await asyncio.wait_for(anext(stream), timeout=PATIENCE_SECONDS)
    assert event == "change"
    assert data == {"kind": "prompt", "name": "greeting", "action": "promote"}


async def test_the_feed_needs_a_key(app: Litestar) -> None:
    async with serve_in_process(app), serve_over_http(app) as base, httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/v1/changes")
    assert response.status_code == 401


def test_a_slow_listener_gets_a_reset_instead_of_unbounded_memory() -> None:
    listener = Listener()
    for i in range(QUEUE_SIZE + 5):
        listener.offer(FeedItem(change=Change("prompt", f"p{i}", "promote")))
    items = [listener.queue.get_nowait() for _ in range(listener.queue.qsize())]
    assert items[0].reset
    assert [item.change.name for item in items[1:] if item.change] == ["p1001", "p1002", "p1003", "p1004"]
