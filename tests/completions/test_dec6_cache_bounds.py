"""The exact cache in Redis at its bounds: a TTL lowered between replicas (or across a restart) and an entry the
running code cannot read (another release's format, or anything else under its key).

- An index must outlive every entry it names, whatever TTL each writer has: a replica with a shorter TTL that
  stores one more answer of the unit (or prompt) must not cut short the index that names a longer-lived entry,
  or the erasure (``DELETE /v1/units/{unit}``, a prompt's ``store_io`` going off) would miss that entry, which
  then lives, and is served, until its own TTL.
- An entry that does not decode is a miss, as an unreachable Redis is: the model answers, instead of the
  completion failing with a 500 (and the unit's access request with it).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.cache import STORE_IO_OFF, STORE_IO_ON, CachedCompletion, ResponseCache
from registry.experiments.privacy_digest import unit_digest
from registry.lib.changes import Change
from registry.settings import Settings
from tests.completions.cached_registry import CachedRegistry, serve_cached_registry
from tests.completions.conftest import backend, publish, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import REDIS_URL

ANSWER = CachedCompletion("hello", "stop", 3, 1)
LONG_TTL, SHORT_TTL = 3600.0, 60.0


@pytest.fixture
async def redis() -> AsyncIterator[tuple[Redis, str]]:
    client = Redis.from_url(REDIS_URL)
    prefix = f"test-dec6-cache-{uuid.uuid4().hex[:12]}:"
    try:
        yield client, prefix
    finally:
        await client.delete(*[key async for key in client.scan_iter(f"{prefix}*")] or ["none"])
        await client.aclose()


async def test_a_writer_with_a_shorter_ttl_does_not_cut_short_an_index_naming_a_longer_lived_entry(
    redis: tuple[Redis, str],
) -> None:
    client, prefix = redis
    # Two replicas on one Redis, the second started with the TTL lowered (an hour, then a minute).
    before, after = ResponseCache(client, prefix, ttl=LONG_TTL), ResponseCache(client, prefix, ttl=SHORT_TTL)
    await before.set("k-old", ANSWER, unit="ada", prompt="greet")
    await after.set("k-new", ANSWER, unit="ada", prompt="greet")

    unit_index_left = await client.pttl(f"{prefix}completion-unit:{unit_digest('ada')}")
    prompt_index_left = await client.pttl(f"{prefix}completion-prompt:greet")
    entry_left = await client.pttl(f"{prefix}completion:k-old")  # read after: never longer than it was
    assert entry_left > SHORT_TTL * 1000  # the hour's entry
    # Before, each write set its indexes' expiry to its own TTL: a minute, so for the rest of the hour the
    # hour-long entry was named by no index, and neither the unit's erasure nor store_io going off found it.
    assert unit_index_left >= entry_left
    assert prompt_index_left >= entry_left
    # And a longer TTL still pushes an index further out.
    await before.set("k-later", ANSWER, unit="ada", prompt="greet")
    assert await client.pttl(f"{prefix}completion-unit:{unit_digest('ada')}") >= await client.pttl(
        f"{prefix}completion:k-later"
    )
    assert await after.erase_unit("ada") == 3
    assert await before.get("k-old") is None


async def test_an_entry_that_does_not_decode_is_a_miss_and_not_listed(redis: tuple[Redis, str]) -> None:
    client, prefix = redis
    cache = ResponseCache(client, prefix, ttl=SHORT_TTL)
    await cache.set("k", ANSWER, unit="ada")
    await cache.set("k-good", ANSWER, unit="ada")
    await client.set(f"{prefix}completion:k", b"\x93\xa5hello\xa4stop\x03")  # three fields of four: another format

    assert await cache.get("k") is None  # before: msgspec's ValidationError, out of the completion path
    assert [entry for entry, _ in await cache.entries_of_unit("ada")] == [ANSWER]
    assert await cache.erase_unit("ada") == 2  # deleted all the same


@pytest.fixture
async def served(
    settings: Settings, clean_database: AsyncEngine, tmp_path: Path, fault: FaultServer
) -> AsyncIterator[CachedRegistry]:
    async with serve_cached_registry(
        "postgresql+redis", settings, tmp_path, backends={"fault": backend(fault.url)}
    ) as registry:
        yield registry


async def test_a_completion_whose_cached_entry_does_not_decode_is_answered_by_the_model(
    served: CachedRegistry, fault: FaultServer
) -> None:
    client, admin = served.client, served.admin
    model = unique("ok")
    await publish(
        client, admin, backend="fault", model=model, params={"max_tokens": 8, "temperature": 0}, store_io=True
    )
    unit = f"ada-{uuid.uuid4().hex[:8]}"
    body = {"variables": {"name": "Ada"}, "unit": unit}
    first = await client.post("/v1/prompts/greet/complete", json=body, headers=admin)
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False
    # What the registry stored for it, overwritten with what this release cannot read.
    redis = Redis.from_url(REDIS_URL)
    try:
        prefix = served.settings.redis_key_prefix
        keys = await redis.smembers(f"{prefix}completion-unit:{unit_digest(unit)}")
        assert len(keys) == 1
        await redis.set(f"{prefix}completion:{next(iter(keys)).decode()}", b"not msgpack at all \xc1")

        listed = await client.get(f"/v1/units/{unit}", headers=admin)
        again = await client.post("/v1/prompts/greet/complete", json=body, headers=admin)
    finally:
        await redis.aclose()

    assert again.status_code == 200, again.text  # before: 500, every time until the entry expired
    assert again.json()["cached"] is False
    assert again.json()["text"] == first.json()["text"]
    assert len(fault.seen(model, CHAT)) == 2  # the model answered it
    assert listed.status_code == 200, listed.text  # before: 500
    assert listed.json()["cached_completions"] == []


async def test_answers_left_by_a_deletion_that_failed_are_not_served_once_store_io_is_on_again(
    redis: tuple[Redis, str], closed_port_url: str
) -> None:
    client, prefix = redis
    cache = ResponseCache(client, prefix, ttl=LONG_TTL)
    # The same replica's Redis, unreachable while store_io goes off: the deletion fails (logged), as documented.
    unreachable = Redis.from_url(closed_port_url.replace("http://", "redis://"))
    away = ResponseCache(unreachable, prefix, ttl=LONG_TTL)
    try:
        await cache.set("k", ANSWER, unit="ada", prompt="greet")
        await cache.set("k-other", ANSWER, prompt="other")
        away.on_change(Change("prompt", "greet", STORE_IO_OFF))
        await away.settled()
        assert await cache.get("k") == ANSWER  # left to its TTL: not read while store_io is off

        cache.on_change(Change("prompt", "greet", STORE_IO_ON))
        await cache.settled()
    finally:
        await unreachable.aclose()

    # Before, the answer kept from before store_io went off was served again for the rest of its hour.
    assert await cache.get("k") is None
    assert await cache.get("k-other") == ANSWER
    await cache.set("k", ANSWER, unit="ada", prompt="greet")  # and the prompt's answers are kept again
    assert await cache.get("k") == ANSWER
