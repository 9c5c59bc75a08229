"""The exact cache where it meets a prompt's storage policy: turning ``store_io`` off deletes the prompt's entries.

Entries the prompt stored while ``store_io`` was on are gone once it goes off (not merely unread), from Redis and
from the in-process cache alike; other prompts' entries stay. Turned back on, the prompt's requests ask the model
again and are cached anew.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.cache import STORE_IO_OFF, CachedCompletion, ResponseCache
from registry.lib.changes import Change
from registry.settings import Settings
from tests.completions.cached_registry import SHAPES, CachedRegistry, serve_cached_registry
from tests.completions.conftest import backend, publish, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import REDIS_URL

DETERMINISTIC = {"max_tokens": 8, "temperature": 0}
ANSWER = CachedCompletion("hello", "stop", 3, 1)


@pytest.fixture(params=SHAPES)
async def served(
    request: pytest.FixtureRequest, settings: Settings, clean_database: AsyncEngine, tmp_path: Path, fault: FaultServer
) -> AsyncIterator[CachedRegistry]:
    backends = {"fault": backend(fault.url)}  # type: ignore[attr-defined]
    async with serve_cached_registry(request.param, settings, tmp_path, backends=backends) as registry:
        yield registry


async def ask(served: CachedRegistry, prompt: str, name: str = "Ada") -> bool:
    """Complete ``prompt`` for ``name``; whether the exact cache answered."""
    body = {"variables": {"name": name}, "unit": "u1"}
    response = await served.client.post(f"/v1/prompts/{prompt}/complete", json=body, headers=served.admin)
    assert response.status_code == 200, response.text
    cached: Any = response.json()["cached"]
    return bool(cached)


async def set_store_io(served: CachedRegistry, prompt: str, store_io: bool) -> None:
    response = await served.client.patch(f"/v1/prompts/{prompt}", json={"store_io": store_io}, headers=served.admin)
    assert response.status_code == 200, response.text
    await served.cache.settled()  # in Redis, the change is carried out in a task of its own


async def stored_in_redis(served: CachedRegistry, prompt: str) -> tuple[bool, set[str]]:
    """Whether Redis holds the prompt's index, and which of the entries it names are there (none without Redis)."""
    if served.settings.redis_url is None:
        return False, set()
    prefix = served.settings.redis_key_prefix
    redis = Redis.from_url(REDIS_URL)
    try:
        index = f"{prefix}completion-prompt:{prompt}"
        members = {member.decode() for member in await redis.smembers(index)}
        return bool(await redis.exists(index)), {k for k in members if await redis.exists(f"{prefix}completion:{k}")}
    finally:
        await redis.aclose()


async def test_turning_store_io_off_deletes_the_prompts_cached_completions_and_no_others(
    served: CachedRegistry, fault: FaultServer
) -> None:
    model = unique("ok")
    await publish(served.client, served.admin, backend="fault", model=model, params=DETERMINISTIC, store_io=True)
    await publish(
        served.client,
        served.admin,
        backend="fault",
        model=model,
        params=DETERMINISTIC,
        store_io=True,
        prompt="other",
        config="cfg-other",
    )
    served_before = [await ask(served, "greet"), await ask(served, "greet"), await ask(served, "other")]
    greet_before, other_before = await stored_in_redis(served, "greet"), await stored_in_redis(served, "other")
    greet_keys = greet_before[1]

    await set_store_io(served, "greet", False)

    greet_after, other_after = await stored_in_redis(served, "greet"), await stored_in_redis(served, "other")
    redis = served.settings.redis_url is not None
    greet_left = await stored_entries(served, greet_keys)
    while_off = await ask(served, "greet")
    await set_store_io(served, "greet", True)
    after = [await ask(served, "greet"), await ask(served, "greet"), await ask(served, "other")]

    assert served_before == [False, True, False]
    assert while_off is False
    assert after == [False, True, True]  # greet's entry was gone; other's stayed; greet is cached anew
    assert len(fault.seen(model, CHAT)) == 2 + 1 + 1
    assert (greet_before[0], other_before[0]) == (redis, redis)  # in Redis, both prompts' indexes, with entries
    assert (bool(greet_keys), bool(other_before[1])) == (redis, redis)
    assert (greet_after, greet_left) == ((False, set()), set())  # greet's index and entries are gone
    assert other_after[0] == redis  # other's index stays, with its entries (other's is served above)
    assert bool(other_after[1]) == redis


async def stored_entries(served: CachedRegistry, keys: set[str]) -> set[str]:
    """Which of the exact cache's ``keys`` Redis still holds."""
    if served.settings.redis_url is None:
        return set()
    prefix = served.settings.redis_key_prefix
    redis = Redis.from_url(REDIS_URL)
    try:
        return {key for key in keys if await redis.exists(f"{prefix}completion:{key}")}
    finally:
        await redis.aclose()


@pytest.mark.parametrize("where", ["redis", "in-process"])
async def test_a_completion_in_flight_when_store_io_goes_off_stores_nothing(where: str) -> None:
    redis = Redis.from_url(REDIS_URL) if where == "redis" else None
    prefix = f"test-{unique('cache').replace('/', '-')}:"
    cache = ResponseCache(redis, prefix, ttl=60)
    try:
        await cache.set("before", ANSWER, prompt="greet")
        await cache.set("other", ANSWER, prompt="other")
        cache.on_change(Change("prompt", "greet", STORE_IO_OFF))  # heard while the model answered
        await cache.settled()
        await cache.set("in-flight", ANSWER, prompt="greet", unit="ada")

        assert [await cache.get(key) for key in ("before", "in-flight", "other")] == [None, None, ANSWER]
        if redis is not None:
            assert {key async for key in redis.scan_iter(f"{prefix}completion-unit:*")} == set()
    finally:
        if redis is not None:
            await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}*")] or ["none"])
            await redis.aclose()


async def test_the_in_process_cache_follows_store_io_on_every_replica() -> None:
    here, there = ResponseCache(None, "p:", ttl=60), ResponseCache(None, "p:", ttl=60)
    for cache in (here, there):
        await cache.set("k1", ANSWER, prompt="greet")
        await cache.set("k2", ANSWER, prompt="other")
        cache.on_change(Change("prompt", "greet", STORE_IO_OFF))  # as the change bus (or change log) tells each

    for cache in (here, there):
        assert (await cache.get("k1"), await cache.get("k2")) == (None, ANSWER)


async def test_prompt_changes_other_than_the_storage_policy_leave_the_cache_alone() -> None:
    cache = ResponseCache(None, "p:", ttl=60)
    await cache.set("k", ANSWER, prompt="greet")

    cache.on_change(Change("prompt", "greet", "updated"))
    await cache.set("k2", ANSWER, prompt="greet")

    assert (await cache.get("k"), await cache.get("k2")) == (ANSWER, ANSWER)
