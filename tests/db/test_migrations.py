"""Migrations are the schema: they match the models and run up and down on both databases."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from registry.app import create_app
from registry.db import migrate
from registry.db.base import Base
from registry.db.engine import create_engine
from registry.settings import Settings
from tests.api import create_prompt, create_version, promote
from tests.conftest import create_database, drop_database, make_key_on, serve_in_process


def schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def test_models_and_migrations_agree_on_postgresql(admin_engine: AsyncEngine) -> None:
    async with admin_engine.connect() as connection:
        assert await connection.run_sync(schema_differences) == []


async def test_upgrade_downgrade_upgrade_on_postgresql() -> None:
    name = f"registry_migrations_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(await create_database(name), poolclass=NullPool)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(table_names) == set(Base.metadata.tables)
        await migrate.downgrade(engine, "base")
        async with engine.connect() as connection:
            assert await connection.run_sync(table_names) == set()
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences) == []
    finally:
        await engine.dispose()
        await drop_database(name)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        redis_url=None,
        access_log=False,
        log_level="WARNING",
    )


async def test_migrations_run_up_and_down_on_sqlite(sqlite_settings: Settings) -> None:
    engine = create_engine(sqlite_settings)
    try:
        await migrate.upgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences) == []
        await migrate.downgrade(engine, "base")
        async with engine.connect() as connection:
            assert await connection.run_sync(table_names) == set()
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


async def test_the_embedded_default_serves_the_whole_flow(sqlite_settings: Settings) -> None:
    """SQLite and the in-process cache, as `make run` starts them: create, version, promote, render, rollback."""
    engine = create_engine(sqlite_settings)
    await migrate.upgrade(engine)
    await engine.dispose()
    admin = await make_key_on(sqlite_settings)
    async with serve_in_process(create_app(sqlite_settings)) as http:
        await create_prompt(http, admin, "support/summarize")
        await create_version(http, admin, "support/summarize", "Summarize: {{ text }}")
        await create_version(http, admin, "support/summarize", "Briefly summarize: {{ text }}")
        await promote(http, admin, "support/summarize", 1)
        await promote(http, admin, "support/summarize", 2)
        rendered = await http.post(
            "/v1/prompts/support%2Fsummarize/render", json={"variables": {"text": "t"}}, headers=admin
        )
        assert rendered.json()["text"] == "Briefly summarize: t"
        rolled = await http.post("/v1/prompts/support%2Fsummarize/rollback", json={"reason": "worse"}, headers=admin)
        assert rolled.status_code == 200
        rendered = await http.post(
            "/v1/prompts/support%2Fsummarize/render", json={"variables": {"text": "t"}}, headers=admin
        )
        assert rendered.json()["text"] == "Summarize: t"
        tagged = await http.post("/v1/prompts", json={"name": "tagged", "tags": ["x"]}, headers=admin)
        assert tagged.status_code == 201
        by_tag = (await http.get("/v1/prompts", params={"tag": "x"}, headers=admin)).json()["items"]
        assert [p["name"] for p in by_tag] == ["tagged"]
        assert (await http.get("/ready")).json() == {
            "status": "ready",
            "database": "ok",
            "redis": "not configured",
            "experiments_unloadable": [],
        }
