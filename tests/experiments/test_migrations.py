"""Migration 0002 matches the models and goes down and up again, on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from registry.db import migrate
from registry.db.base import Base
from registry.db.engine import create_engine
from registry.settings import Settings
from tests.conftest import RUN_ID, create_database, drop_database

EXPERIMENT_TABLES = {
    "metrics",
    "experiments",
    "experiment_variants",
    "experiment_metrics",
    "experiment_phases",
    "exposures",
    "outcome_events",
    "unit_changes",
    "experiment_units",
    "unit_metric_values",
    "experiment_variant_counts",
    "experiment_metric_sums",
}


async def differences(engine: AsyncEngine) -> list[object]:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def down_and_up(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    assert await differences(engine) == []
    await migrate.downgrade(engine, "0001")
    remaining = await tables(engine)
    assert not remaining & EXPERIMENT_TABLES
    assert "prompts" in remaining
    await migrate.upgrade(engine)
    assert await tables(engine) >= EXPERIMENT_TABLES
    assert await differences(engine) == []


async def test_migrations_match_the_models_on_the_test_database(admin_engine: AsyncEngine) -> None:
    assert await differences(admin_engine) == []


async def test_postgresql_downgrades_and_upgrades() -> None:
    name = f"registry_test_{RUN_ID}_migrations"
    url = await create_database(name)
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        await down_and_up(engine)
    finally:
        await engine.dispose()
        await drop_database(name)


async def test_sqlite_downgrades_and_upgrades(tmp_path: Path) -> None:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"))
    try:
        await down_and_up(engine)
    finally:
        await engine.dispose()
