"""The semantic cache's settings API, and a completion whose embedding backend is down.

The embedding backend here is an address where nothing listens; the rules with a real embedding model
are in test_semantic_cache.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from registry.completions.models import SemanticCacheEntry
from registry.completions.semantic_repository import SemanticCacheRepository
from registry.completions.similarity import DEFAULT_THRESHOLD, pack
from registry.db.base import utcnow
from registry.db.engine import create_sessionmaker
from tests.completions.conftest import EMBEDDING_MODEL, RegistryFactory, backend, publish, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import KeyFactory, problem

DETERMINISTIC = {"max_tokens": 8, "temperature": 0}


# -- the settings API (PostgreSQL)


@pytest.fixture
async def client(registry: RegistryFactory, fault: FaultServer, closed_port_url: str) -> httpx.AsyncClient:
    backends = {"fault": backend(fault.url), "embed": backend(closed_port_url)}  # type: ignore[attr-defined]
    return await registry(backends, semantic_cache_backend="embed", semantic_cache_model=EMBEDDING_MODEL)


async def test_a_prompt_has_its_semantic_cache_off_at_the_default_threshold_until_set(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await publish(client, admin, backend="fault", model="ok", store_io=True)

    body = (await client.get("/v1/prompts/greet/semantic-cache", headers=admin)).json()

    assert body == {
        "prompt": "greet",
        "enabled": False,
        "threshold": DEFAULT_THRESHOLD,
        "exact_variables": [],
        "backend_configured": True,
        "updated_at": None,
        "updated_by": None,
    }


async def test_setting_the_semantic_cache_is_audited_and_read_back(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await publish(client, admin, backend="fault", model="ok", store_io=True)

    response = await client.put(
        "/v1/prompts/greet/semantic-cache",
        json={"enabled": True, "threshold": 0.8, "exact_variables": ["name"]},
        headers=admin,
    )
    read = (await client.get("/v1/prompts/greet/semantic-cache", headers=admin)).json()
    audit = (await client.get("/v1/audit/", params={"resource_name": "greet"}, headers=admin)).json()

    assert response.status_code == 200, response.text
    assert (read["enabled"], read["threshold"], read["exact_variables"]) == (True, 0.8, ["name"])
    assert audit["items"][0]["action"] == "prompt.semantic_cache.set"
    assert audit["items"][0]["before"] is None
    assert audit["items"][0]["after"] == {"enabled": True, "threshold": 0.8, "exact_variables": ["name"]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enabled": True, "threshold": 0}, "threshold"),
        ({"enabled": True, "threshold": 1.01}, "threshold"),
        ({"enabled": True, "exact_variables": ["account"]}, "exact_variables[0]"),
        ({"enabled": True, "exact_variables": ["name", "name"]}, "exact_variables[1]"),
        ({"threshold": 0.9}, "enabled"),
    ],
    ids=["threshold-zero", "threshold-above-one", "unknown-variable", "variable-twice", "enabled-missing"],
)
async def test_bad_settings_are_refused_naming_the_field_and_nothing_changes(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    await publish(client, admin, backend="fault", model="ok", store_io=True)

    response = await client.put("/v1/prompts/greet/semantic-cache", json=body, headers=admin)
    read = (await client.get("/v1/prompts/greet/semantic-cache", headers=admin)).json()

    assert response.status_code in (400, 422)
    found = problem(response)
    assert field in json.dumps(found), found
    assert read["enabled"] is False
    assert read["updated_at"] is None


async def test_an_unknown_variable_is_refused_with_the_prompts_variables_named(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await publish(client, admin, backend="fault", model="ok", store_io=True)

    response = await client.put(
        "/v1/prompts/greet/semantic-cache", json={"enabled": True, "exact_variables": ["account"]}, headers=admin
    )

    assert response.status_code == 422
    errors = problem(response)["errors"]
    assert errors == [
        {
            "field": "exact_variables[0]",
            "message": "'account' is not a variable of any version of prompt 'greet' (its variables: name)",
        }
    ]


async def test_the_semantic_cache_of_an_unknown_prompt_is_not_found(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    response = await client.put("/v1/prompts/nobody/semantic-cache", json={"enabled": True}, headers=admin)

    assert response.status_code == 404
    assert problem(response)["status"] == 404


@pytest.mark.parametrize(("scopes", "status"), [((Scope.WRITE,), 403), ((Scope.READ,), 403), ((Scope.PROMOTE,), 200)])
async def test_changing_the_semantic_cache_takes_the_promote_scope(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    make_key: KeyFactory,
    scopes: tuple[Scope, ...],
    status: int,
) -> None:
    await publish(client, admin, backend="fault", model="ok", store_io=True)
    headers = await make_key(*scopes)

    response = await client.put("/v1/prompts/greet/semantic-cache", json={"enabled": True}, headers=headers)

    assert response.status_code == status


# -- an embedding backend that is down


async def test_an_embedding_backend_that_is_down_leaves_the_completion_to_the_model_and_is_counted(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, params=DETERMINISTIC, store_io=True)
    await client.put("/v1/prompts/greet/semantic-cache", json={"enabled": True}, headers=admin)

    answers = [
        await client.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=admin)
        for _ in range(2)
    ]
    metrics = (await client.get("/metrics")).text

    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["cached"] for a in answers] == [False, False]
    assert len(fault.seen(model, CHAT)) == 2
    assert 'registry_semantic_cache_lookups_total{outcome="unavailable"} 2.0' in metrics


# -- expiry


async def test_the_purge_deletes_expired_answers_only(migrated_engine: AsyncEngine) -> None:
    now = utcnow()
    entry = {
        "scope": "s",
        "prompt": "p",
        "prompt_version": 1,
        "config": "c",
        "config_version": 1,
        "embedding": pack([1.0, 0.0]),
        "text": "answer",
        "created_at": now - timedelta(hours=2),
    }
    sessionmaker = create_sessionmaker(migrated_engine)
    async with sessionmaker() as session, session.begin():
        repository = SemanticCacheRepository(session)
        for hours in (-1, 1):
            await repository.add_entry(SemanticCacheEntry(**entry, expires_at=now + timedelta(hours=hours)))
    async with sessionmaker() as session:
        served = await SemanticCacheRepository(session).candidates("s", now=now, limit=10)

    async with sessionmaker() as session, session.begin():
        purged = await SemanticCacheRepository(session).purge_expired(now)
    async with sessionmaker() as session:
        left = await SemanticCacheRepository(session).candidates("s", now=now - timedelta(days=1), limit=10)

    assert [entry_id for entry_id, _ in served] == [2]
    assert purged == 1
    assert [entry_id for entry_id, _ in left] == [2]
