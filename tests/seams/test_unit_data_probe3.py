"""A unit's data as the OpenAI door and ``/complete`` leave it, read back by ``GET /v1/units/{unit}``."""

from __future__ import annotations

import uuid

import httpx
import pytest

from registry.completions.cache import CachedCompletion, ResponseCache
from registry.lib.cache import TTLCache
from tests.completions.conftest import RegistryFactory, backend, registry, unique  # noqa: F401 - registry: fixture
from tests.completions.fault_server import FaultServer, say
from tests.guards.conftest import config_version, prompt_on

CHAT = "/v1/chat/completions"


async def asked(registry: RegistryFactory, fault: FaultServer, admin: dict[str, str]) -> httpx.AsyncClient:  # noqa: F811
    """Prompt ``ask`` (texts stored) on the stand-in, its records written only when something flushes them."""
    client = await registry(
        {"fault": backend(fault.url)}, completion_cache_ttl_seconds=60, completion_usage_flush_seconds=3600.0
    )
    body = {"backend": "fault", "model": unique(say("Hi there.")), "params": {"max_tokens": 50, "temperature": 0}}
    number = await config_version(client, admin, "cfg", body)
    await prompt_on(client, admin, "ask", "cfg", number, "Answer {{ question }}")
    assert (await client.patch("/v1/prompts/ask", json={"store_io": True}, headers=admin)).status_code == 200
    return client


@pytest.mark.parametrize("door", ["openai", "complete"])
async def test_a_units_completions_not_yet_written_are_part_of_its_data_at_once(
    registry: RegistryFactory,  # noqa: F811
    fault: FaultServer,
    admin: dict[str, str],
    door: str,
) -> None:
    client = await asked(registry, fault, admin)
    if door == "openai":
        body = {"model": "prompt:ask", "messages": [{"role": "user", "content": "hello"}], "user": "alice"}
        answer = await client.post(CHAT, json={**body, "variables": {"question": "q"}}, headers=admin)
    else:
        answer = await client.post(
            "/v1/prompts/ask/complete", json={"variables": {"question": "q"}, "unit": "alice"}, headers=admin
        )
    assert answer.status_code == 200, answer.text

    # Read before the recorder's next flush: the record is still in this process's buffer.
    shown = await client.get("/v1/units/alice", headers=admin)

    assert shown.status_code == 200, shown.text
    completions = shown.json()["completions"]
    assert completions["count"] == 1
    [stored] = completions["stored_texts"]
    assert stored["completion_text"] == "Hi there."
    erased = await client.delete("/v1/units/alice", headers=admin)
    assert erased.json()["completions"] == completions["count"]  # what the access request showed, erased


@pytest.mark.parametrize("door", ["openai", "complete"])
async def test_the_exact_cache_answer_a_units_request_stored_is_part_of_its_data_until_it_is_erased(
    registry: RegistryFactory,  # noqa: F811
    fault: FaultServer,
    admin: dict[str, str],
    door: str,
) -> None:
    client = await asked(registry, fault, admin)
    unit = f"alice-{uuid.uuid4().hex[:8]}"  # the session's Redis keeps an erased unit's tombstone for an hour
    if door == "openai":
        body = {"model": "prompt:ask", "messages": [], "variables": {"question": "q"}, "user": unit}
        answer = await client.post(CHAT, json=body, headers=admin)
    else:
        answer = await client.post(
            "/v1/prompts/ask/complete", json={"variables": {"question": "q"}, "unit": unit}, headers=admin
        )
    assert answer.status_code == 200, answer.text

    shown = await client.get(f"/v1/units/{unit}", headers=admin)

    assert shown.status_code == 200, shown.text
    [kept] = shown.json()["cached_completions"]
    assert (kept["text"], kept["finish_reason"]) == ("Hi there.", "stop")
    assert kept["expires_at"] > shown.json()["completions"]["stored_texts"][0]["created_at"]
    erased = await client.delete(f"/v1/units/{unit}", headers=admin)
    assert erased.json()["cached_completions"] == 1  # what the access request showed, erased
    assert (await client.get(f"/v1/units/{unit}", headers=admin)).status_code == 404


async def test_a_cache_without_redis_shows_a_units_fresh_entries_and_none_once_erased() -> None:
    moments = [1000.0]
    cache = ResponseCache(None, "p:", ttl=60)
    cache._local = TTLCache(100, clock=lambda: moments[0])
    answer = CachedCompletion("Hi there.", "stop", 7, 3)
    await cache.set("k1", answer, unit="alice", prompt="ask")
    await cache.set("k2", CachedCompletion("Other.", "stop", 7, 1), unit="bob", prompt="ask")
    moments[0] += 20

    assert await cache.entries_of_unit("alice") == [(answer, 40.0)]
    moments[0] += 41  # expired
    assert await cache.entries_of_unit("alice") == []
    await cache.set("k1", answer, unit="alice", prompt="ask")
    assert await cache.erase_unit("alice") == 1
    assert await cache.entries_of_unit("alice") == []
