"""The semantic cache and a prompt's storage policy (``store_io``), and the erasure of a unit's data.

Entries are written through the repository where only the rules of the policy and of erasure matter; the
end-to-end erasure answers with the real embedding model (``vllm_embeddings_url``).
"""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.models import SemanticCacheEntry
from registry.completions.semantic_repository import SemanticCacheRepository
from registry.completions.similarity import pack
from registry.db.base import utcnow
from registry.db.engine import create_sessionmaker
from registry.experiments.privacy import unit_digest
from registry.settings import Settings
from tests.completions.conftest import EMBEDDING_MODEL, RegistryFactory, backend, publish, unique, until
from tests.completions.fault_server import CHAT, FaultServer
from tests.completions.semantic import ask_as, semantic_registry
from tests.conftest import make_key_on, problem

DETERMINISTIC = {"max_tokens": 8, "temperature": 0}
QUESTION = "How do I reset my password?"
REWORDED = "How can I change my password?"  # 0.87 from QUESTION with all-MiniLM-L6-v2


@pytest.fixture
async def client(registry: RegistryFactory, fault: FaultServer, closed_port_url: str) -> httpx.AsyncClient:
    """A registry whose embedding backend is an address where nothing listens: a lookup counts unavailable."""
    backends = {"fault": backend(fault.url), "embed": backend(closed_port_url)}  # type: ignore[attr-defined]
    return await registry(backends, semantic_cache_backend="embed", semantic_cache_model=EMBEDDING_MODEL)


async def add_entries(engine: AsyncEngine, *entries: tuple[str, str | None]) -> None:
    """One unexpired entry per (prompt, unit), answered ``answer for <unit>``."""
    now = utcnow()
    async with create_sessionmaker(engine)() as session, session.begin():
        repository = SemanticCacheRepository(session)
        for prompt, unit in entries:
            await repository.add_entry(
                SemanticCacheEntry(
                    scope="s",
                    prompt=prompt,
                    prompt_version=1,
                    config="cfg",
                    config_version=1,
                    embedding=pack([1.0, 0.0]),
                    text=f"answer for {unit}",
                    created_at=now,
                    expires_at=now + timedelta(hours=1),
                    unit_digest=None if unit is None else unit_digest(unit),
                )
            )


async def entries(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT prompt, text FROM semantic_cache_entries ORDER BY id"))
        return [(row[0], row[1]) for row in rows.all()]


async def settings_of(client: httpx.AsyncClient, headers: dict[str, str], prompt: str = "greet") -> dict[str, Any]:
    response = await client.get(f"/v1/prompts/{prompt}/semantic-cache", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- the storage policy


async def test_enabling_the_semantic_cache_on_a_prompt_that_stores_no_io_is_refused_naming_the_fix(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await publish(client, admin, backend="fault", model="ok")  # store_io false

    response = await client.put("/v1/prompts/greet/semantic-cache", json={"enabled": True}, headers=admin)
    off = await client.put("/v1/prompts/greet/semantic-cache", json={"enabled": False}, headers=admin)

    body = problem(response)
    assert response.status_code == 422
    assert body["type"] == "/problems/semantic_cache_needs_store_io"
    assert "PATCH /v1/prompts/greet" in body["detail"]
    assert '{"store_io": true}' in body["detail"]
    assert body["errors"] == [{"field": "enabled", "message": "cannot be true while the prompt's store_io is false"}]
    assert off.status_code == 200, off.text
    assert (await settings_of(client, admin))["enabled"] is False


async def test_turning_store_io_off_turns_the_semantic_cache_off_and_deletes_the_prompts_answers(
    client: httpx.AsyncClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="fault", model="ok", store_io=True)
    await publish(client, admin, backend="fault", model="ok", prompt="other", config="cfg2", store_io=True)
    enabled = await client.put("/v1/prompts/greet/semantic-cache", json={"enabled": True}, headers=admin)
    assert enabled.status_code == 200, enabled.text
    await add_entries(clean_database, ("greet", "u1"), ("greet", None), ("other", "u1"))

    response = await client.patch("/v1/prompts/greet", json={"store_io": False}, headers=admin)
    audit = (await client.get("/v1/audit/", params={"resource_name": "greet"}, headers=admin)).json()

    assert response.status_code == 200, response.text
    assert response.json()["store_io"] is False
    assert (await settings_of(client, admin))["enabled"] is False
    assert await entries(clean_database) == [("other", "answer for u1")]
    actions = [(item["action"], item["after"]) for item in audit["items"][:2]]
    assert actions == [
        ("prompt.semantic_cache.set", {"enabled": False, "reason": "store_io", "entries_deleted": 2}),
        ("prompt.storage_policy", {"store_io": False}),
    ]


async def test_turning_store_io_off_deletes_answers_left_from_when_the_cache_was_on(
    client: httpx.AsyncClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="fault", model="ok", store_io=True)
    await add_entries(clean_database, ("greet", "u1"))

    response = await client.patch("/v1/prompts/greet", json={"store_io": False}, headers=admin)

    assert response.status_code == 200, response.text
    assert await entries(clean_database) == []


async def test_a_prompt_that_stores_no_io_never_looks_up_even_with_settings_left_on(
    client: httpx.AsyncClient, admin: dict[str, str], clean_database: AsyncEngine, fault: FaultServer
) -> None:
    """Settings that read as on (written before this rule, or seen by a replica a moment before the policy
    changed) do not make a prompt that stores no inputs and outputs keep any."""
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, params=DETERMINISTIC)
    async with clean_database.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO semantic_cache_settings (prompt_id, enabled, threshold, exact_variables, updated_at,"
                " updated_by) SELECT id, true, 0.5, '[]', now(), 'test' FROM prompts WHERE name = 'greet'"
            )
        )

    answer = await client.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=admin)
    metrics = (await client.get("/metrics")).text

    assert answer.status_code == 200, answer.text
    assert answer.json()["cached"] is False
    assert len(fault.seen(model, CHAT)) == 1
    assert 'registry_semantic_cache_lookups_total{outcome="unavailable"}' not in metrics


# -- erasure of a unit's data


async def test_a_units_cached_answers_are_described_and_erased_and_no_one_elses(
    client: httpx.AsyncClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await add_entries(clean_database, ("greet", "carol"), ("greet", "dave"), ("greet", None))

    described = await client.get("/v1/units/carol", headers=admin)
    erased = await client.delete("/v1/units/carol", headers=admin)
    again = await client.get("/v1/units/carol", headers=admin)
    audit = (await client.get("/v1/audit/", params={"resource_name": unit_digest("carol")}, headers=admin)).json()

    assert described.status_code == 200, described.text
    answers = described.json()["cached_answers"]
    assert [(a["prompt"], a["version"], a["config"], a["text"]) for a in answers] == [
        ("greet", 1, "cfg", "answer for carol")
    ]
    assert erased.json() == {
        "unit": "carol",
        "exposures": 0,
        "events": 0,
        "derived_rows": 0,
        "cached_answers": 1,
        "completions": 0,
        "completion_texts": 0,
        "cached_completions": 0,
        "forced_variants": 0,
    }
    assert again.status_code == 404
    assert await entries(clean_database) == [("greet", "answer for dave"), ("greet", "answer for None")]
    assert audit["items"][0]["after"]["cached_answers"] == 1


@pytest.mark.vllm
@pytest.mark.timeout(900)
async def test_an_erased_units_answer_is_no_longer_served_to_anyone(
    registry: RegistryFactory, settings: Settings, fault: FaultServer, vllm_embeddings_url: str
) -> None:
    headers = await make_key_on(settings)
    http = await semantic_registry(registry, fault, vllm_embeddings_url)
    model = unique("ok")
    template = "{{ question }}"
    await publish(http, headers, backend="fault", model=model, params=DETERMINISTIC, template=template, store_io=True)
    enabled = await http.put(
        "/v1/prompts/greet/semantic-cache", json={"enabled": True, "threshold": 0.8}, headers=headers
    )
    assert enabled.status_code == 200, enabled.text

    ask = functools.partial(ask_as, http, headers)
    await ask(QUESTION, "carol")
    before = await ask(REWORDED, "dave")
    described = (await http.get("/v1/units/carol", headers=headers)).json()
    erased = (await http.delete("/v1/units/carol", headers=headers)).json()
    after = await ask(REWORDED, "erin")

    assert before["cached"] == "semantic"
    assert len(described["cached_answers"]) == 1
    assert erased["cached_answers"] == 1
    assert after["cached"] is False
    assert len(fault.seen(model, CHAT)) == 2


@pytest.mark.vllm
@pytest.mark.timeout(900)
async def test_an_answer_that_arrives_after_store_io_was_turned_off_is_not_kept(
    registry: RegistryFactory,
    settings: Settings,
    fault: FaultServer,
    vllm_embeddings_url: str,
    clean_database: AsyncEngine,
) -> None:
    headers = await make_key_on(settings)
    http = await semantic_registry(registry, fault, vllm_embeddings_url)
    model = unique("slow-first:1")  # the model starts answering a second after the request reaches it
    template = "{{ question }}"
    await publish(http, headers, backend="fault", model=model, params=DETERMINISTIC, template=template, store_io=True)
    enabled = await http.put("/v1/prompts/greet/semantic-cache", json={"enabled": True}, headers=headers)
    assert enabled.status_code == 200, enabled.text

    asked = asyncio.create_task(ask_as(http, headers, QUESTION, "carol"))
    await until(functools.partial(_seen, fault, model), "the request to reach the model", seconds=30)
    turned_off = await http.patch("/v1/prompts/greet", json={"store_io": False}, headers=headers)
    answer = await asked

    assert turned_off.status_code == 200, turned_off.text
    assert answer["cached"] is False
    assert await entries(clean_database) == []


async def _seen(fault: FaultServer, model: str) -> bool:
    return bool(fault.seen(model, CHAT))
