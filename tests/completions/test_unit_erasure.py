"""A unit's completions and exact cache entries, where they meet its erasure (``registry.experiments.privacy``).

Erasure cuts the unit's completion records loose from it (unit, request id and stored texts cleared) and keeps
what usage, budgets and the daily rollup counted; the completions observation source no longer sees the unit;
the exact cache entries its requests stored are deleted, from Redis and from the in-process cache alike.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.cache import CachedCompletion, CacheUnavailableError, ResponseCache
from registry.completions.observations import CompletionSource
from registry.completions.repository import CompletionRepository
from registry.db.base import utcnow
from registry.db.engine import create_sessionmaker
from registry.experiments.privacy import UnitDataService
from registry.experiments.privacy_digest import unit_digest
from registry.experiments.sources import MetricSource
from tests.completions.conftest import RegistryFactory, backend, publish, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import REDIS_URL, TEST_ACTOR

COMPLETE = "/v1/prompts/greet/complete"
DETERMINISTIC = {"max_tokens": 8, "temperature": 0}
ANSWER = CachedCompletion("hello", "stop", 3, 1)


@pytest.fixture(params=["redis", "in-process"])
async def client(request: pytest.FixtureRequest, registry: RegistryFactory, fault: FaultServer) -> httpx.AsyncClient:
    """A registry with the exact cache on, its entries in Redis or (without Redis) in the process."""
    shared = {} if request.param == "redis" else {"redis_url": None}
    return await registry(
        {"fault": backend(fault.url)},  # type: ignore[attr-defined]
        completion_cache_ttl_seconds=60,
        completion_usage_flush_seconds=3600.0,
        **shared,
    )


def fresh_unit(name: str) -> str:
    """A unit no other test of the run erased (an erasure refuses the unit's cache writes for a while)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def complete_as(http: httpx.AsyncClient, headers: dict[str, str], unit: str, name: str) -> dict[str, Any]:
    response = await http.post(COMPLETE, json={"variables": {"name": name}, "unit": unit}, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def usage(http: httpx.AsyncClient, headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
    """Usage by prompt (also writes the buffered completions first)."""
    response = await http.get("/v1/usage", params={"group_by": "prompt", **params}, headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def records(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    query = "SELECT unit, request_id, prompt_text, completion_text, output_tokens, cost FROM completions ORDER BY id"
    async with engine.connect() as connection:
        return [tuple(row) for row in (await connection.execute(text(query))).all()]


async def observed(engine: AsyncEngine, unit: str) -> int:
    """How many observations the completions source gives of ``unit`` (a metric counting its completions)."""
    metric = MetricSource(metric_id=1, source="completions", source_field="completions")
    async with create_sessionmaker(engine)() as session:
        found = await CompletionSource().observations(session, [unit], [metric])
    return len(found.get(unit, []))


async def test_unit_data_counts_its_completions_and_shows_the_texts_they_keep(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await publish(client, admin, backend="fault", model=unique("ok"), store_io=True)
    await complete_as(client, admin, "ada", "Ada, ada@example.com")
    await complete_as(client, admin, "bob", "Bob")
    assert (await client.patch("/v1/prompts/greet", json={"store_io": False}, headers=admin)).status_code == 200
    await complete_as(client, admin, "ada", "Ada")
    await usage(client, admin)

    response = await client.get("/v1/units/ada", headers=admin)

    assert response.status_code == 200, response.text  # completions alone are data held on the unit
    completions = response.json()["completions"]
    assert completions["count"] == 2
    assert [(t["prompt"], t["version"], t["config"]) for t in completions["stored_texts"]] == [("greet", 1, "cfg")]
    assert "[EMAIL]" in completions["stored_texts"][0]["prompt_text"]
    assert "ada@example.com" not in response.text
    assert completions["stored_texts"][0]["completion_text"]


async def test_erasing_a_unit_clears_its_completions_identity_and_texts_and_keeps_what_usage_counted(
    client: httpx.AsyncClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="fault", model=unique("ok"), store_io=True, prices=(1.0, 3.0))
    for unit, name in (("ada", "Ada"), ("ada", "Ada Lovelace"), ("bob", "Bob")):
        await complete_as(client, admin, unit, name)
    today = utcnow().date()
    whole_days = {"since": (today - timedelta(days=1)).isoformat(), "until": today.isoformat()}
    before = (await usage(client, admin), await usage(client, admin, **whole_days))
    stored = await records(clean_database)
    observed_before = await observed(clean_database, "ada")

    response = await client.delete("/v1/units/ada", headers=admin)

    assert response.status_code == 200, response.text
    assert response.json()["completions"] == 2
    assert response.json()["completion_texts"] == 2
    after = await records(clean_database)
    assert [row[:4] for row in after[:2]] == [(None, None, None, None)] * 2
    assert after[2] == stored[2]  # bob's, untouched
    assert [row[4:] for row in after] == [row[4:] for row in stored]  # tokens and cost stay
    assert (await usage(client, admin), await usage(client, admin, **whole_days)) == before
    assert observed_before == 2
    assert await observed(clean_database, "ada") == 0
    assert (await client.get("/v1/units/ada", headers=admin)).status_code == 404
    audit = (await client.get("/v1/audit/", params={"resource_name": unit_digest("ada")}, headers=admin)).json()
    assert audit["items"][0]["after"]["completions"] == 2
    assert audit["items"][0]["after"]["completion_texts"] == 2
    assert "Lovelace" not in str(await records(clean_database))


async def test_an_erased_units_buffered_completion_is_counted_and_written_without_it(
    client: httpx.AsyncClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="fault", model=unique("ok"), store_io=True, prices=(1.0, 3.0))
    await complete_as(client, admin, "carol", "Carol")  # buffered: usage is written once an hour here

    erased = await client.delete("/v1/units/carol", headers=admin)
    written = await usage(client, admin)

    assert (erased.json()["completions"], erased.json()["completion_texts"]) == (1, 1)
    audit = (await client.get("/v1/audit/", params={"resource_name": unit_digest("carol")}, headers=admin)).json()
    assert (audit["items"][0]["after"]["completions"], audit["items"][0]["after"]["completion_texts"]) == (1, 1)
    assert written[0]["requests"] == 1
    rows = await records(clean_database)
    assert [row[:4] for row in rows] == [(None, None, None, None)]
    assert rows[0][4] > 0


async def test_erasing_a_unit_deletes_the_exact_cache_entries_its_requests_stored(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("ok")
    ada = fresh_unit("ada")  # an erased unit's requests are not cached for a while, and Redis outlives a test
    await publish(client, admin, backend="fault", model=model, params=DETERMINISTIC, store_io=True)
    await complete_as(client, admin, ada, "Ada")
    again = await complete_as(client, admin, ada, "Ada")
    await complete_as(client, admin, "bob", "Bob")

    erased = (await client.delete(f"/v1/units/{ada}", headers=admin)).json()
    after = await complete_as(client, admin, "erin", "Ada")
    others = await complete_as(client, admin, "bob", "Bob")

    assert again["cached"] is True
    assert erased["cached_completions"] == 1
    assert after["cached"] is False  # the model was asked again
    assert others["cached"] is True  # bob's entry stays
    assert len(fault.seen(model, CHAT)) == 3
    audit = (await client.get("/v1/audit/", params={"resource_name": unit_digest(ada)}, headers=admin)).json()
    assert audit["items"][0]["after"]["cached_completions"] == 1


async def test_a_units_index_in_redis_lives_as_long_as_the_entries_it_names() -> None:
    redis = Redis.from_url(REDIS_URL)
    prefix = f"test-{unique('cache').replace('/', '-')}:"
    cache = ResponseCache(redis, prefix, ttl=60)
    try:
        await cache.set("k1", ANSWER, unit="ada")
        await cache.set("k2", ANSWER, unit="ada")
        await cache.set("k3", ANSWER)
        index = f"{prefix}completion-unit:{unit_digest('ada')}"
        members = {m.decode() for m in await redis.smembers(index)}
        index_ttl = await redis.pttl(index)
        entry_ttl = await redis.pttl(f"{prefix}completion:k2")  # read after: never longer than it was

        assert members == {"k1", "k2"}  # digests only: the unit itself is in no key
        assert 0 < entry_ttl <= index_ttl <= 60_000
        assert await cache.erase_unit("ada") == 2
        assert await redis.exists(index) == 0
        assert (await cache.get("k1"), await cache.get("k3")) == (None, ANSWER)
        assert await cache.erase_unit("ada") == 0
    finally:
        await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}*")] or ["none"])
        await redis.aclose()


async def test_the_in_process_cache_drops_a_units_entries_on_every_replica() -> None:
    erasing, other = ResponseCache(None, "p:", ttl=60), ResponseCache(None, "p:", ttl=60)
    for cache in (erasing, other):
        await cache.set("k1", ANSWER, unit="ada")
        await cache.set("k2", ANSWER, unit="bob")

    assert await erasing.erase_unit("ada") == 1
    other.on_unit_erased(unit_digest("ada"))  # as the change bus tells it: by digest

    for cache in (erasing, other):
        assert (await cache.get("k1"), await cache.get("k2")) == (None, ANSWER)


async def test_an_erasure_the_cache_cannot_complete_leaves_everything_as_it_was(
    clean_database: AsyncEngine, closed_port_url: str
) -> None:
    await _add_completion(clean_database, "ada")
    unreachable = Redis.from_url(closed_port_url.replace("http://", "redis://"))
    cache = ResponseCache(unreachable, "p:", ttl=60)
    try:
        with pytest.raises(CacheUnavailableError):
            async with create_sessionmaker(clean_database)() as session, session.begin():
                await UnitDataService(session, {}, grace=timedelta(0), cache=cache).erase("ada", TEST_ACTOR)
    finally:
        await unreachable.aclose()

    assert [row[0] for row in await records(clean_database)] == ["ada"]
    assert CacheUnavailableError.status_code == 503


async def _add_completion(engine: AsyncEngine, unit: str) -> None:
    async with create_sessionmaker(engine)() as session, session.begin():
        record = {"prompt": "greet", "unit": unit, "status": "ok", "output_tokens": 2, "cost": 0.5}
        await CompletionRepository(session).add_records([{**record, "prompt_text": "Hi", "completion_text": "Hello"}])


async def test_erasure_anonymises_completions_and_leaves_the_rollup_alike_on_both_databases(
    migrated_engine: AsyncEngine,
) -> None:
    await _add_completion(migrated_engine, "ada")
    await _add_completion(migrated_engine, "bob")
    rollup = "SELECT requests, output_tokens, cost FROM usage_daily"
    async with migrated_engine.connect() as connection:
        before = (await connection.execute(text(rollup))).all()
    cache = ResponseCache(None, "p:", ttl=60)
    await cache.set("k", ANSWER, unit="ada")

    async with create_sessionmaker(migrated_engine)() as session, session.begin():
        service = UnitDataService(session, {"completions": CompletionSource()}, grace=timedelta(0), cache=cache)
        erased = await service.erase("ada", TEST_ACTOR)

    assert (erased.completions, erased.completion_texts, erased.cached_completions) == (1, 1, 1)
    assert [row[:4] for row in await records(migrated_engine)] == [
        (None, None, None, None),
        ("bob", None, "Hi", "Hello"),
    ]
    async with migrated_engine.connect() as connection:
        assert (await connection.execute(text(rollup))).all() == before
    assert await observed(migrated_engine, "ada") == 0
