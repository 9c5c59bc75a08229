"""Console sessions on PostgreSQL and Redis (the browser tests run the embedded default)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.console.sessions import ConsoleSessions
from tests.api import Client, Headers, create_prompt, create_version
from tests.conftest import AppClient

_CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


async def sign_in(client: Client, key: str) -> None:
    form = await client.get("/console/login")
    match = _CSRF.search(form.text)
    assert match is not None
    answer = await client.post("/console/login", data={"api_key": key, "csrf": match.group(1), "next": ""})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/prompts"


async def test_a_session_is_stored_sealed_and_ends_when_its_key_is_revoked(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await create_prompt(client, admin, "support/triage")
    await create_version(client, admin, "support/triage")
    created = (await client.post("/v1/keys", json={"name": "product", "scopes": ["read"]}, headers=admin)).json()
    await sign_in(client, created["key"])

    listing = await client.get("/console/prompts")
    assert listing.status_code == 200
    assert "support/triage" in listing.text
    async with clean_database.connect() as connection:
        stored = (await connection.execute(text("SELECT token_digest, sealed_key FROM console_sessions"))).all()
    assert len(stored) == 1
    assert created["key"].encode() not in bytes(stored[0].sealed_key)
    assert stored[0].token_digest != client.cookies["registry_console"]

    revoked = await client.delete(f"/v1/keys/{created['api_key']['id']}", headers=admin)
    assert revoked.status_code == 200
    after = await client.get("/console/prompts")
    assert after.status_code == 303
    assert after.headers["location"].startswith("/console/login")
    async with clean_database.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM console_sessions"))).scalar_one() == 0


async def test_a_session_ends_when_its_lifetime_is_over(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    sessions = ConsoleSessions(client.app.state.runtime, lifetime=timedelta(minutes=10))
    signed_in_at = datetime.now(UTC)
    token = await sessions.sign_in(admin["Authorization"].removeprefix("Bearer "), now=signed_in_at)
    assert await sessions.admit(token, now=signed_in_at + timedelta(minutes=9)) is not None
    assert await sessions.admit(token, now=signed_in_at + timedelta(minutes=10)) is None
