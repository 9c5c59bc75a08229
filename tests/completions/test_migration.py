"""Migration 0003 goes up and down on PostgreSQL and SQLite, and matches the models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from registry.db import migrate
from registry.db.models import Base
from tests.conftest import RUN_ID, create_database, drop_database


@pytest.fixture(params=["postgresql", "sqlite"])
async def fresh_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", poolclass=NullPool)
        yield engine
        await engine.dispose()
        return
    name = f"registry_migration_{RUN_ID}"
    engine = create_async_engine(await create_database(name), poolclass=NullPool)
    yield engine
    await engine.dispose()
    await drop_database(name)


def _shape(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    return {
        "tables": set(inspector.get_table_names()),
        "config_columns": {c["name"] for c in inspector.get_columns("model_config_versions")},
        "prompt_columns": {c["name"] for c in inspector.get_columns("prompts")},
    }


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migration_upgrades_downgrades_and_matches_the_models(fresh_engine: AsyncEngine) -> None:
    await migrate.upgrade(fresh_engine, "head")
    async with fresh_engine.connect() as connection:
        at_head = await connection.run_sync(_shape)
        differences = await connection.run_sync(_differences)

    await migrate.downgrade(fresh_engine, "0001")
    async with fresh_engine.connect() as connection:
        at_core = await connection.run_sync(_shape)

    await migrate.upgrade(fresh_engine, "head")

    assert {"completions", "api_key_budgets"} <= at_head["tables"]
    assert "fallback_version_id" in at_head["config_columns"]
    assert "store_io" in at_head["prompt_columns"]
    assert differences == []
    assert not {"completions", "api_key_budgets"} & at_core["tables"]
    assert "fallback_version_id" not in at_core["config_columns"]
    assert "store_io" not in at_core["prompt_columns"]
