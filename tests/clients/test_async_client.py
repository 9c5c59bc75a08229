"""The asyncio client keeps the same promises: cache, background refresh, change feed, outages."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from prompt_registry_client import AsyncRegistryClient, CachePolicy, RetryPolicy, ServiceUnavailable

from tests.clients.conftest import AsyncRecordingTransport, Live, Recorder, text
from tests.waiting import eventually_async


async def test_the_async_client_caches_refreshes_in_the_background_and_follows_the_feed(live: Live) -> None:
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"), text("v3 {{ name }}"))
    recorder = Recorder()
    transport = AsyncRecordingTransport(recorder)
    async with AsyncRegistryClient(live.url, live.key, transport=transport, cache=CachePolicy(ttl=0.2)) as registry:
        assert (await registry.render("greet", {"name": "Ada"})).text == "v1 Ada"
        assert (await registry.get_prompt("greet")).version == 1
        assert recorder.count("GET /v1/prompts/greet") == 1
        await eventually_async(_changes_connected(recorder), "the change feed connecting")
        await asyncio.sleep(0.25)  # the copy expires (ttl 0.2)
        live.promote("greet", 2)
        await eventually_async(lambda: _version_is(registry, 2), "the promotion to 2 reaching the client")
        live.promote("greet", 3)
        await eventually_async(lambda: _version_is(registry, 3), "the promotion to 3 reaching the client")
    assert recorder.count("GET /v1/changes") == 1


def _changes_connected(recorder: Recorder) -> Callable[[], Awaitable[bool]]:
    async def connected() -> bool:
        return recorder.count("GET /v1/changes") == 1

    return connected


async def _version_is(registry: AsyncRegistryClient, version: int) -> bool:
    return (await registry.get_prompt("greet")).version == version


async def test_the_async_client_serves_the_cache_then_the_fallback_when_the_service_is_stopped(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    fast = RetryPolicy(attempts=2, backoff=0.01)
    async with AsyncRegistryClient(live.url, live.key, retries=fast, cache=CachePolicy(ttl=0.05)) as registry:
        await registry.get_prompt("greet")
        live.stop()
        await asyncio.sleep(0.1)
        cached = await registry.render("greet", {"name": "Ada"})
        fallback = await registry.render("farewell", {"name": "Ada"}, fallback="Bye {{ name }}")
        with pytest.raises(ServiceUnavailable):
            await registry.get_prompt("farewell")
    assert cached.text == "Hello Ada!"
    assert (fallback.text, fallback.fallback) == ("Bye Ada", True)
