"""The change feed is one request that lasts: its key was checked when it opened and never again, so a key
revoked (or expired) while listening kept hearing of every prompt, config and experiment that changed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from litestar import Litestar

from registry.auth.keys import Scope
from tests.api import Headers, create_prompt, create_version, promote
from tests.conftest import KeyFactory, serve_in_process, serve_over_http
from tests.feed.test_change_feed import events
from tests.waiting import PATIENCE_SECONDS


async def rest_of(stream: AsyncIterator[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [event async for event in stream]


async def test_a_key_revoked_while_listening_ends_its_feed(app: Litestar, admin: Headers, make_key: KeyFactory) -> None:
    listener = await make_key(Scope.READ, name="listener")
    async with serve_in_process(app) as writer, serve_over_http(app) as base:
        await create_prompt(writer, admin, "greeting")
        await create_version(writer, admin, "greeting")
        keys = (await writer.get("/v1/keys", headers=admin)).json()["items"]
        [key_id] = [key["id"] for key in keys if key["name"] == "listener"]
        async with (
            httpx.AsyncClient(base_url=base, headers=listener) as http,
            http.stream("GET", "/v1/changes") as response,
        ):
            stream = events(response)
            assert (await anext(stream))[0] == "hello"
            assert (await writer.delete(f"/v1/keys/{key_id}", headers=admin)).status_code == 200
            await promote(writer, admin, "greeting", 1)
            # Only a hang guard: the feed's end is the behaviour, not how soon it came.
            heard = await asyncio.wait_for(rest_of(stream), timeout=PATIENCE_SECONDS)
    assert heard == []  # the promotion after the revocation was not told
