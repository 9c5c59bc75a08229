"""A model guard's cached verdicts go when the guarded prompt's ``store_io`` goes off, as its own cached answers do.

The classifier's verdict is on the guarded prompt's text, and the exact cache keeps it (under its hashed key, until
its TTL) while that prompt's ``store_io`` is on. Turning it off must erase what was kept of its texts: the verdicts
are deleted with the prompt's entries, in Redis and in every replica's process, and an identical request made once
``store_io`` is on again is classified anew (the classifier's calls are counted on the stand-in backend). Verdicts
on another guarded prompt's texts stay.
"""

from __future__ import annotations

import uuid
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
from tests.completions.conftest import backend, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import REDIS_URL
from tests.guards.conftest import config_version, ok, prompt_on
from tests.guards.test_classifier_unit_data import MODERATION, deterministic_classifier

VERDICT = CachedCompletion('{"flagged": false, "category": "none", "reason": "fine"}', "stop", 9, 12)


@pytest.fixture(params=SHAPES)
async def served(
    request: pytest.FixtureRequest, settings: Settings, clean_database: AsyncEngine, tmp_path: Path, fault: FaultServer
) -> AsyncIterator[CachedRegistry]:
    backends = {"fault": backend(fault.url)}  # type: ignore[attr-defined]
    async with serve_cached_registry(request.param, settings, tmp_path, backends=backends) as registry:
        yield registry


async def set_store_io(served: CachedRegistry, prompt: str, store_io: bool) -> None:
    await ok(await served.client.patch(f"/v1/prompts/{prompt}", json={"store_io": store_io}, headers=served.admin))
    await served.cache.settled()  # in Redis, the change is carried out in a task of its own


async def ask(served: CachedRegistry, prompt: str, question: dict[str, Any]) -> None:
    await ok(await served.client.post(f"/v1/prompts/{prompt}/complete", json=question, headers=served.admin))


async def cached_of(served: CachedRegistry, unit: str) -> list[str]:
    """The texts of the exact cache's entries the unit's requests stored (its data, as ``GET /v1/units`` lists)."""
    listed = await ok(await served.client.get(f"/v1/units/{unit}", headers=served.admin))
    return [entry["text"] for entry in listed["cached_completions"]]


async def test_turning_store_io_off_deletes_the_classifiers_cached_verdicts_on_the_prompts_texts(
    served: CachedRegistry, fault: FaultServer
) -> None:
    client, admin = served.client, served.admin
    judge = await deterministic_classifier(client, admin)  # greedy, store_io on: its verdicts are cached
    guarded_config = {"backend": "fault", "model": unique("ok"), "params": {"max_tokens": 50}, "guards": [MODERATION]}
    number = await config_version(client, admin, "cfg", guarded_config)
    for prompt in ("ask", "other"):
        await prompt_on(client, admin, prompt, "cfg", number, "Answer {{ question }}")
        await set_store_io(served, prompt, True)
    ada, bob = f"ada-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    asked = {"variables": {"question": "where is Zanzibar"}, "unit": ada}
    other = {"variables": {"question": "where is Timbuktu"}, "unit": bob}
    for _ in range(2):
        await ask(served, "ask", asked)
        await ask(served, "other", other)
    classified_before = len(fault.seen(judge, CHAT))
    kept_before = (await cached_of(served, ada), await cached_of(served, bob))

    await set_store_io(served, "ask", False)
    kept_after = (await cached_of(served, ada), await cached_of(served, bob))
    await set_store_io(served, "ask", True)
    await ask(served, "ask", asked)
    await ask(served, "other", other)

    assert classified_before == 2  # each prompt's text once: the second checks were answered from the cache
    assert kept_before == ([VERDICT.text], [VERDICT.text])
    assert kept_after == ([], [VERDICT.text])  # ask's verdict is gone at once; other's stays
    assert len(fault.seen(judge, CHAT)) == 3  # ask's text is classified again; other's verdict is still served


async def test_every_replica_drops_the_verdicts_it_keeps_on_a_prompt_whose_store_io_goes_off() -> None:
    here, there = ResponseCache(None, "p:", ttl=60), ResponseCache(None, "p:", ttl=60)
    for cache in (here, there):
        # A verdict of a model guard of prompt ask: its classifier caches it as covered by ask.
        await cache.set("verdict", VERDICT, prompt="moderator", unit="ada", covering=("ask",))
        await cache.set("own", VERDICT, prompt="moderator")  # the classifier prompt's own request, guarding none
        cache.on_change(Change("prompt", "ask", STORE_IO_OFF))  # as the change bus (or change log) tells each

    for cache in (here, there):
        assert (await cache.get("verdict"), await cache.get("own")) == (None, VERDICT)


@pytest.mark.parametrize("where", ["redis", "in-process"])
async def test_a_verdict_in_flight_when_the_guarded_prompts_store_io_goes_off_is_not_stored(where: str) -> None:
    redis = Redis.from_url(REDIS_URL) if where == "redis" else None
    prefix = f"test-{unique('verdicts').replace('/', '-')}:"
    cache = ResponseCache(redis, prefix, ttl=60)
    try:
        await cache.set("before", VERDICT, prompt="moderator", unit="ada", covering=("ask",))
        cache.on_change(Change("prompt", "ask", STORE_IO_OFF))  # heard while the classifier answered
        await cache.settled()
        await cache.set("in-flight", VERDICT, prompt="moderator", unit="ada", covering=("ask",))
        await cache.set("unguarded", VERDICT, prompt="moderator", unit="ada")

        assert [await cache.get(key) for key in ("before", "in-flight", "unguarded")] == [None, None, VERDICT]
    finally:
        if redis is not None:
            await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}*")] or ["none"])
            await redis.aclose()
