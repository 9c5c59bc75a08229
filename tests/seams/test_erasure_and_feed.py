"""Unit erasure and the change feed: the feed tells listeners what changed, never which unit was erased."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
from litestar import Litestar

from registry.auth.keys import Scope
from tests.conftest import KeyFactory, serve_in_process, serve_over_http
from tests.experiments.conftest import flush_and_aggregate, make_experiment, make_metric, make_prompt

PATIENCE_SECONDS = 10  # a hang guard only


async def changes(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    async for line in response.aiter_lines():
        if line.startswith("data: ") and line != "data: {}":
            yield json.loads(line.removeprefix("data: "))


async def test_an_erasure_does_not_reach_the_feed_with_the_units_id(
    app: Litestar, admin: dict[str, str], make_key: KeyFactory
) -> None:
    reader = await make_key(Scope.READ, name="feed-reader")
    async with serve_in_process(app) as client, serve_over_http(app) as base:
        await make_prompt(client, admin, "greet")
        await make_metric(client, admin, "converted")
        await make_experiment(client, admin, "tone", "greet")
        render = {"variables": {"x": "1"}, "unit": "alice@example.com"}
        assert (await client.post("/v1/prompts/greet/render", json=render, headers=admin)).status_code == 200
        await flush_and_aggregate(client)
        async with (
            httpx.AsyncClient(base_url=base, headers=reader) as http,
            http.stream("GET", "/v1/changes") as response,
        ):
            assert response.status_code == 200
            stream = changes(response)
            assert "at" in await asyncio.wait_for(anext(stream), timeout=PATIENCE_SECONDS)  # hello
            erased = await client.delete("/v1/units/alice@example.com", headers=admin)
            assert erased.status_code == 200, erased.text
            await client.patch("/v1/prompts/greet", json={"description": "after the erasure"}, headers=admin)
            seen = await asyncio.wait_for(anext(stream), timeout=PATIENCE_SECONDS)
    assert "alice@example.com" not in json.dumps(seen)
    assert (seen["kind"], seen["name"]) == ("prompt", "greet")
