"""An answer that arrives after its unit's erasure, or after its prompt's ``store_io`` went off, is kept in
neither cache.

The backend holds the completion after its semantic cache lookup (an event, no timing), the unit is erased (or
``store_io`` turned off), then the backend answers: neither the semantic cache (on PostgreSQL and SQLite) nor the
exact cache (in Redis and in the process) keeps anything of it, and a later identical request asks the model again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.cache import CachedCompletion, ResponseCache
from registry.completions.models import SemanticCacheEntry
from registry.completions.semantic_cache import SemanticCache, SemanticProbe
from registry.completions.semantic_privacy import stop_keeping_answers
from registry.completions.semantic_repository import SemanticCacheRepository
from registry.completions.similarity import pack
from registry.db.base import utcnow
from registry.db.engine import create_sessionmaker
from registry.experiments.privacy import UnitDataService
from registry.experiments.privacy_digest import unit_digest
from registry.prompts.models import Prompt
from registry.settings import Settings
from tests.completions.cached_registry import SHAPES, CachedRegistry, serve_cached_registry
from tests.completions.conftest import WAIT, HeldBackend, backend, publish, unique, until
from tests.completions.fault_server import CHAT
from tests.completions.semantic import miss_for, semantic_cache_on
from tests.conftest import REDIS_URL, TEST_ACTOR

DETERMINISTIC = {"max_tokens": 8, "temperature": 0}
ANSWER = CachedCompletion("hello", "stop", 3, 1)


@pytest.fixture(params=SHAPES)
async def served(
    request: pytest.FixtureRequest, settings: Settings, clean_database: AsyncEngine, tmp_path: Path, held: HeldBackend
) -> AsyncIterator[CachedRegistry]:
    fields = {
        "backends": {"held": backend(held.url)},
        "semantic_cache_backend": "held",
        "semantic_cache_model": "fixed-vector",
    }
    async with serve_cached_registry(request.param, settings, tmp_path, **fields) as registry:
        yield registry


async def semantic_entries_of(engine: AsyncEngine, unit: str) -> int:
    query = text("SELECT count(*) FROM semantic_cache_entries WHERE unit_digest = :digest")
    async with engine.connect() as connection:
        return int((await connection.execute(query, {"digest": unit_digest(unit)})).scalar_one())


async def test_an_answer_that_arrives_after_its_units_erasure_is_kept_in_no_cache(
    served: CachedRegistry, held: HeldBackend
) -> None:
    client, admin = served.client, served.admin
    model = unique("ok")
    await publish(client, admin, backend="held", model=model, params=DETERMINISTIC, store_io=True)
    enabled = await client.put(
        "/v1/prompts/greet/semantic-cache", json={"enabled": True, "threshold": 0.8}, headers=admin
    )
    assert enabled.status_code == 200, enabled.text
    unit = f"ada-{uuid.uuid4().hex[:8]}"
    body = {"variables": {"name": "Ada"}, "unit": unit}

    in_flight = asyncio.create_task(client.post("/v1/prompts/greet/complete", json=body, headers=admin))
    assert await asyncio.to_thread(held.arrived.wait, WAIT), "the completion never reached the backend"
    erased = await asyncio.wait_for(client.delete(f"/v1/units/{unit}", headers=admin), WAIT)
    held.release.set()
    answered = await asyncio.wait_for(in_flight, WAIT)
    again = await client.post("/v1/prompts/greet/complete", json={**body, "unit": "bob"}, headers=admin)

    assert erased.status_code == 200, erased.text
    assert (erased.json()["cached_answers"], erased.json()["cached_completions"]) == (0, 0)  # nothing yet
    assert answered.status_code == 200, answered.text
    assert answered.json()["cached"] is False
    assert await semantic_entries_of(served.engine, unit) == 0
    assert again.json()["cached"] is False  # neither cache kept the erased unit's answer: the model answered
    assert len(held.fault.seen(model, CHAT)) == 2
    assert await semantic_entries_of(served.engine, "bob") == 1  # a request after the erasure is kept as ever
    if served.settings.redis_url is not None:
        redis = Redis.from_url(REDIS_URL)
        try:
            index = f"{served.settings.redis_key_prefix}completion-unit:{unit_digest(unit)}"
            assert await redis.exists(index) == 0
        finally:
            await redis.aclose()


@pytest.mark.parametrize("where", ["redis", "in-process"])
async def test_an_exact_cache_write_after_the_units_erasure_is_refused(where: str) -> None:
    redis = Redis.from_url(REDIS_URL) if where == "redis" else None
    prefix = f"test-{unique('cache').replace('/', '-')}:"
    cache = ResponseCache(redis, prefix, ttl=60)
    try:
        await cache.set("before", ANSWER, unit="ada", prompt="greet")
        assert await cache.erase_unit("ada") == 1
        await cache.set("in-flight", ANSWER, unit="ada", prompt="greet")  # the model answered after the erasure
        await cache.set("bob", ANSWER, unit="bob", prompt="greet")

        assert [await cache.get(key) for key in ("before", "in-flight", "bob")] == [None, None, ANSWER]
        if redis is not None:
            assert await redis.exists(f"{prefix}completion-unit:{unit_digest('ada')}") == 0
            assert await redis.smembers(f"{prefix}completion-prompt:greet") == {b"before", b"bob"}
    finally:
        if redis is not None:
            await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}*")] or ["none"])
            await redis.aclose()


async def waiting_for_a_lock(engine: AsyncEngine) -> bool:
    """Whether a session of the test's database waits for a lock (an advisory one, or a row's)."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with engine.connect() as connection:
        return int((await connection.execute(query)).scalar_one()) > 0


async def cached_prompt(engine: AsyncEngine) -> tuple[SemanticCache, SemanticProbe, Prompt]:
    """Prompt ``greet`` with its semantic cache on, a semantic cache, and a miss looked up for unit ``ada``."""
    cache, prompt = await semantic_cache_on(engine, "greet")
    return cache, miss_for("greet", "ada"), prompt


async def test_on_postgresql_a_store_waits_for_the_erasure_in_progress_and_then_keeps_nothing(
    clean_database: AsyncEngine,
) -> None:
    """The erasure has deleted the unit's entries but not committed: without the lock the store would not see
    it, insert, and commit an entry the erasure never deletes."""
    cache, looked_up, _ = await cached_prompt(clean_database)

    async with create_sessionmaker(clean_database)() as erasing, erasing.begin():
        await UnitDataService(erasing, {}, grace=timedelta(0)).erase("ada", TEST_ACTOR)
        storing = asyncio.create_task(cache.store(looked_up, ANSWER))
        await until(lambda: waiting_for_a_lock(clean_database), "the store to wait for the erasure")
        waited = not storing.done()
    await asyncio.wait_for(storing, WAIT)

    assert waited
    assert await semantic_entries_of(clean_database, "ada") == 0


async def test_on_postgresql_a_store_waits_for_store_io_going_off_and_then_keeps_nothing(
    clean_database: AsyncEngine,
) -> None:
    """``store_io`` is going off (its entries deleted, not committed) while an answer is stored: the store waits on
    the settings' lock and reads the cache off, where it would otherwise insert an entry nothing deletes."""
    cache, looked_up, prompt = await cached_prompt(clean_database)
    await cache._prompt_settings("greet")  # read before the change, as a completion in flight had

    async with create_sessionmaker(clean_database)() as changing, changing.begin():
        assert await stop_keeping_answers(changing, prompt, TEST_ACTOR) == 0
        storing = asyncio.create_task(cache.store(looked_up, ANSWER))
        await until(lambda: waiting_for_a_lock(clean_database), "the store to wait for the settings")
        waited = not storing.done()
    await asyncio.wait_for(storing, WAIT)

    assert waited
    async with clean_database.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM semantic_cache_entries"))).scalar_one() == 0


async def test_on_postgresql_store_io_going_off_waits_for_a_store_in_progress_and_deletes_its_entry(
    clean_database: AsyncEngine,
) -> None:
    """A store has read the cache on (under its shared lock) and inserted, not committed: turning ``store_io`` off
    locks the settings before deleting, so it deletes the entry once the store commits."""
    _, _, prompt = await cached_prompt(clean_database)
    sessionmaker = create_sessionmaker(clean_database)

    async with sessionmaker() as storing, storing.begin():  # what ``SemanticCache.store`` does in its transaction
        repository = SemanticCacheRepository(storing)
        assert await repository.keeps_answers(prompt.id)
        await repository.add_entry(
            SemanticCacheEntry(
                scope="scope",
                prompt="greet",
                prompt_version=1,
                config="cfg",
                config_version=1,
                embedding=pack([1.0, 0.0]),
                text="hello",
                created_at=utcnow(),
                expires_at=utcnow() + timedelta(hours=1),
            )
        )

        async def turn_off() -> int:
            async with sessionmaker() as changing, changing.begin():
                return await stop_keeping_answers(changing, prompt, TEST_ACTOR)

        changing = asyncio.create_task(turn_off())
        await until(lambda: waiting_for_a_lock(clean_database), "store_io going off to wait for the store")
    deleted = await asyncio.wait_for(changing, WAIT)

    assert deleted == 1
    async with clean_database.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM semantic_cache_entries"))).scalar_one() == 0


async def test_an_answer_that_arrives_after_store_io_went_off_is_kept_in_no_cache(
    served: CachedRegistry, held: HeldBackend
) -> None:
    client, admin = served.client, served.admin
    model = unique("ok")
    await publish(client, admin, backend="held", model=model, params=DETERMINISTIC, store_io=True)
    settings = {"enabled": True, "threshold": 0.8}
    assert (await client.put("/v1/prompts/greet/semantic-cache", json=settings, headers=admin)).status_code == 200
    body = {"variables": {"name": "Ada"}, "unit": "u1"}

    in_flight = asyncio.create_task(client.post("/v1/prompts/greet/complete", json=body, headers=admin))
    assert await asyncio.to_thread(held.arrived.wait, WAIT), "the completion never reached the backend"
    off = await asyncio.wait_for(client.patch("/v1/prompts/greet", json={"store_io": False}, headers=admin), WAIT)
    await served.cache.settled()
    held.release.set()
    answered = await asyncio.wait_for(in_flight, WAIT)
    await served.cache.settled()
    on = await client.patch("/v1/prompts/greet", json={"store_io": True}, headers=admin)
    await served.cache.settled()
    again = await client.post("/v1/prompts/greet/complete", json=body, headers=admin)

    assert (off.status_code, on.status_code) == (200, 200)
    assert answered.status_code == 200, answered.text
    assert answered.json()["cached"] is False
    assert again.json()["cached"] is False  # the exact cache kept nothing: the model answered again
    assert len(held.fault.seen(model, CHAT)) == 2
    async with served.engine.connect() as connection:
        stored = (await connection.execute(text("SELECT count(*) FROM semantic_cache_entries"))).scalar_one()
    assert stored == 0  # nor the semantic cache (turned off with store_io, and not on again)
