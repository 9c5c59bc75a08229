"""Operator commands that write to the database directly publish their changes like the API does.

A server caches a verified key for a minute; `registry keys revoke` must reach it at once, as
`DELETE /v1/keys/{id}` does: through Redis when it is configured, else through the database's
change log, which every process without Redis reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope, parse_key
from registry.cli import main
from registry.db import migrate
from registry.db.engine import create_engine
from registry.lib.changes import Change
from registry.runtime import Runtime
from registry.settings import Settings
from tests.conftest import AppClient, create_key, serve_in_process

ARRIVAL_TIMEOUT = 30.0  # a safety net for a change that never comes, not a measure of speed


@pytest.fixture
async def embedded_settings(tmp_path: Path) -> Settings:
    """The embedded default: SQLite, no Redis."""
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        access_log=False,
        log_level="WARNING",
        bootstrap_admin_key=False,
    )
    engine = create_engine(settings)
    await migrate.upgrade(engine)
    await engine.dispose()
    return settings


@pytest.fixture(params=["embedded", "postgresql-and-redis"])
def deployment(
    request: pytest.FixtureRequest,
    embedded_settings: Settings,
    settings: Settings,
    clean_database: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The settings of the running server; the CLI gets the same through its environment."""
    if request.param == "embedded":
        settings = embedded_settings
        monkeypatch.delenv("REGISTRY_REDIS_URL", raising=False)
    else:
        monkeypatch.setenv("REGISTRY_REDIS_URL", str(settings.redis_url))
        monkeypatch.setenv("REGISTRY_REDIS_KEY_PREFIX", settings.redis_key_prefix)
    monkeypatch.setenv("REGISTRY_DATABASE_URL", settings.database_url)
    return settings


@pytest.fixture
async def server(deployment: Settings) -> AsyncIterator[tuple[AppClient, dict[str, str]]]:
    engine = create_engine(deployment)
    try:
        admin = await create_key(engine, (Scope.ADMIN,), "admin")
    finally:
        await engine.dispose()
    async with serve_in_process(create_app(deployment)) as client:
        yield client, admin


async def next_change(client: AppClient, kind: str) -> asyncio.Future[Change]:
    """A future that the server's change bus completes with the next change of ``kind``."""
    runtime: Runtime = client.app.state.runtime
    arrived: asyncio.Future[Change] = asyncio.get_running_loop().create_future()

    def on_change(change: Change) -> None:
        if change.kind == kind and not arrived.done():
            arrived.set_result(change)

    runtime.bus.subscribe(on_change)
    return arrived


async def test_a_key_revoked_with_the_cli_is_refused_by_a_running_server_at_once(
    server: tuple[AppClient, dict[str, str]],
) -> None:
    client, admin = server
    assert (await client.get("/v1/keys", headers=admin)).status_code == 200  # verified and cached for a minute
    public_id = parse_key(admin["Authorization"].removeprefix("Bearer "))[0]  # type: ignore[index]
    arrived = await next_change(client, "api_key")

    revoked = await asyncio.to_thread(CliRunner().invoke, main, ["keys", "revoke", public_id])
    assert revoked.exit_code == 0, revoked.output
    change = await asyncio.wait_for(arrived, ARRIVAL_TIMEOUT)

    assert change == Change("api_key", public_id, "revoked")
    refused = await client.get("/v1/keys", headers=admin)
    assert refused.status_code == 401


async def test_without_redis_a_revocation_through_one_worker_reaches_another(embedded_settings: Settings) -> None:
    """Two worker processes of one embedded server share no memory, only the database."""
    engine = create_engine(embedded_settings)
    try:
        admin = await create_key(engine, (Scope.ADMIN,), "admin")
        app_key = await create_key(engine, (Scope.READ,), "app")
    finally:
        await engine.dispose()
    public_id = parse_key(app_key["Authorization"].removeprefix("Bearer "))[0]  # type: ignore[index]
    async with (
        serve_in_process(create_app(embedded_settings)) as first,
        serve_in_process(create_app(embedded_settings)) as second,
    ):
        assert (await second.get("/v1/prompts", headers=app_key)).status_code == 200  # cached by the second
        arrived = await next_change(second, "api_key")

        assert (await first.delete(f"/v1/keys/{public_id}", headers=admin)).status_code == 200
        await asyncio.wait_for(arrived, ARRIVAL_TIMEOUT)

        assert (await second.get("/v1/prompts", headers=app_key)).status_code == 401
