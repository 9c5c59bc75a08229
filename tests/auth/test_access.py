"""API keys and scopes: every /v1 route refuses missing keys (401) and missing scopes (403)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import API_PREFIX, create_app, ensure_scopes_declared
from registry.auth.keys import Scope, grants, hash_secret, parse_key, secret_matches
from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.errors import RegistryError
from registry.runtime import Runtime
from registry.settings import Settings
from tests.api import Client, Headers
from tests.conftest import KeyFactory, count_rows, openai_door_paths, openai_problem, problem


def api_operations(app: Litestar) -> list[tuple[str, str, Scope]]:
    """Every (method, concrete path, required scope) under /v1, read from the route table."""
    operations = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith(API_PREFIX):
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                if method != "OPTIONS":
                    operations.append((method, concrete(route.path), handler.opt["scope"]))
    return operations


def concrete(path: str) -> str:
    """A route's path with its parameters filled in."""
    return re.sub(r"\{(\w+):int\}", "1", re.sub(r"\{(\w+):str\}", "anything", path))


def refusal(response: Any, url: str, app: Litestar) -> dict[str, Any]:
    """The problem document of a refusal: problem+json, or inside OpenAI's error object on the OpenAI door."""
    door = {concrete(path) for path in openai_door_paths(app)}
    return openai_problem(response) if url in door else problem(response)


async def test_the_route_table_has_no_unguarded_api_route(app: Litestar) -> None:
    operations = api_operations(app)
    assert len(operations) >= 25
    assert all(isinstance(scope, Scope) for _, _, scope in operations)


def test_an_api_route_without_a_scope_stops_the_app_from_starting(settings: Settings) -> None:
    from litestar import get

    @get("/v1/forgotten", operation_id="forgotten")
    async def forgotten() -> None: ...

    app = create_app(settings)  # its own: the tests' shared routes stay as they are
    app.register(forgotten)
    with pytest.raises(RuntimeError, match="declares no scope"):
        ensure_scopes_declared(app)


async def test_every_api_route_needs_a_key(client: Client, app: Litestar) -> None:
    for method, url, _ in api_operations(app):
        response = await client.request(method, url, json={} if method in ("POST", "PATCH") else None)
        assert response.status_code == 401, (method, url, response.text)
        assert refusal(response, url, app)["type"] == "/problems/unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_every_api_route_checks_its_scope(client: Client, app: Litestar, make_key: KeyFactory) -> None:
    keys = {scope: await make_key(scope, name=f"only-{scope.value}") for scope in Scope if scope is not Scope.ADMIN}
    for method, url, required in api_operations(app):
        for scope, headers in keys.items():
            if grants(frozenset({scope.value}), required):
                continue
            response = await client.request(
                method, url, json={} if method in ("POST", "PATCH") else None, headers=headers
            )
            assert response.status_code == 403, (method, url, scope, response.text)
            assert f"'{required.value}' scope" in refusal(response, url, app)["detail"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer prk_aaaaaaaaaaaa_" + "x" * 43,
        "prk_aaaaaaaaaaaa_" + "x" * 43,
    ],
)
async def test_malformed_or_unknown_keys_are_refused(client: Client, authorization: str) -> None:
    response = await client.get("/v1/prompts", headers={"Authorization": authorization})
    assert response.status_code == 401
    problem(response)


async def test_a_wrong_secret_for_a_real_key_is_refused(client: Client, admin: Headers) -> None:
    public_id = admin["Authorization"].split("_")[1]
    forged = f"Bearer prk_{public_id}_{'A' * 43}"
    assert (await client.get("/v1/prompts", headers={"Authorization": forged})).status_code == 401
    assert (await client.get("/v1/prompts", headers=admin)).status_code == 200


async def test_keys_are_created_once_and_stored_hashed(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    response = await client.post("/v1/keys", json={"name": "checkout-app", "scopes": ["read"]}, headers=admin)
    assert response.status_code == 201
    body = response.json()
    secret = body["key"]
    parsed = parse_key(secret)
    assert parsed is not None
    assert parsed[0] == body["api_key"]["id"]
    async with clean_database.connect() as connection:
        stored = (
            await connection.execute(text("SELECT secret_hash FROM api_keys WHERE public_id = :id"), {"id": parsed[0]})
        ).scalar_one()
        dump = " ".join(str(v) for v in (await connection.execute(text("SELECT * FROM api_keys"))).all())
    assert stored == hash_secret(parsed[1])
    assert parsed[1] not in dump
    listed = (await client.get("/v1/keys", headers=admin)).json()["items"]
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    assert (await client.get("/v1/prompts", headers={"Authorization": f"Bearer {secret}"})).status_code == 200


async def test_revoked_keys_stop_working_immediately(client: Client, admin: Headers) -> None:
    created = (await client.post("/v1/keys", json={"name": "temp", "scopes": ["read"]}, headers=admin)).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert (await client.get("/v1/prompts", headers=headers)).status_code == 200
    revoked = await client.delete(f"/v1/keys/{created['api_key']['id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert (await client.get("/v1/prompts", headers=headers)).status_code == 401
    assert (await client.delete("/v1/keys/nosuchkey123", headers=admin)).status_code == 404


async def test_expired_keys_are_refused(client: Client, admin: Headers, clean_database: AsyncEngine) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = (
        await client.post("/v1/keys", json={"name": "short", "scopes": ["read"], "expires_at": soon}, headers=admin)
    ).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert (await client.get("/v1/prompts", headers=headers)).status_code == 200
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    refused = await client.post(
        "/v1/keys", json={"name": "late", "scopes": ["read"], "expires_at": past}, headers=admin
    )
    assert refused.status_code == 422
    assert await count_rows(clean_database, "api_keys") == 2


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "", "scopes": ["read"]},
        {"scopes": ["read"]},
    ],
)
async def test_bad_key_requests_are_refused(
    client: Client, admin: Headers, clean_database: AsyncEngine, payload: dict[str, Any]
) -> None:
    response = await client.post("/v1/keys", json=payload, headers=admin)
    assert response.status_code == 422
    problem(response)
    assert await count_rows(clean_database, "api_keys") == 1


async def test_last_used_time_is_recorded_in_batches(client: Client, admin: Headers, app: Litestar) -> None:
    await client.get("/v1/prompts", headers=admin)
    runtime: Runtime = app.state.runtime
    await runtime.key_verifier.flush_last_used()
    keys = (await client.get("/v1/keys", headers=admin)).json()["items"]
    assert keys[0]["last_used_at"] is not None


async def test_audit_log_is_admin_only_and_records_mutations(
    client: Client, admin: Headers, make_key: KeyFactory
) -> None:
    writer = await make_key(Scope.WRITE, name="author")
    await client.post("/v1/prompts", json={"name": "audited"}, headers=writer)
    assert (await client.get("/v1/audit", headers=writer)).status_code == 403
    entries = (await client.get("/v1/audit", params={"actor": "author"}, headers=admin)).json()["items"]
    assert [(e["action"], e["resource_name"]) for e in entries] == [("prompt.create", "audited")]
    assert entries[0]["actor_key_id"] is not None
    assert entries[0]["request_id"]


def test_key_format_helpers() -> None:
    assert parse_key("prk_abc") is None
    assert secret_matches("s3cret", hash_secret("s3cret"))
    assert not secret_matches("s3cret", hash_secret("other"))
    assert grants(frozenset({"admin"}), Scope.ANALYZE)
    assert not grants(frozenset({"write"}), Scope.READ)


async def test_cached_keys_survive_a_database_outage(app: Litestar, admin: Headers, client: Client) -> None:
    """Once verified, a key is trusted from memory for a while: reads keep working if the database goes away."""
    runtime: Runtime = app.state.runtime
    verifier = runtime.key_verifier
    await verifier.authenticate(admin["Authorization"])
    unreachable = runtime.settings.model_copy(update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"})
    engine = create_engine(unreachable)
    working, verifier._sessionmaker = verifier._sessionmaker, create_sessionmaker(engine)
    try:
        assert (await verifier.authenticate(admin["Authorization"])).name == "admin"
        with pytest.raises(RegistryError) as caught:
            await verifier.authenticate("Bearer prk_aaaaaaaaaaaa_" + "b" * 43)
        assert caught.value.status_code == 503
    finally:
        verifier._sessionmaker = working
        await engine.dispose()
