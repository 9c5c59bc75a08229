"""An exposure the database refuses is dropped alone: it used to fail its batch on every flush, and the batch was
put back each time, so no exposure of any unit was written again until the process ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from unittest.mock import patch

import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from registry.db.engine import create_engine, create_sessionmaker
from registry.experiments import exposures
from registry.experiments.exposures import ExposureBuffer
from registry.experiments.privacy_digest import unit_digest
from registry.settings import Settings
from tests.experiments.conftest import Client, make_experiment


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def exposed_units(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(text("SELECT unit FROM exposures ORDER BY unit"))).scalars().all())


async def test_an_exposure_the_database_refuses_is_dropped_and_the_others_are_written(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await make_experiment(client, setup, "greet-refused", "greet")
    async with clean_database.connect() as connection:
        experiment = int((await connection.execute(text("SELECT id FROM experiments"))).scalar_one())
    buffer = ExposureBuffer(sessionmaker, max_pending=1000)
    for i in range(4):
        buffer.record(experiment, 1, f"user-{i}", "control")
    buffer.record(experiment, 1, "a\x00b", "control")  # past the door's check: PostgreSQL text holds no NUL
    buffer.record(experiment + 1000, 1, "user-gone", "control")  # its experiment is gone: a foreign key refuses it
    for i in range(4, 8):
        buffer.record(experiment, 1, f"user-{i}", "control")

    # A fresh logger: the module's cached one keeps the processors of its first use and would not reach capture_logs.
    with capture_logs() as logs, patch.object(exposures, "logger", structlog.get_logger(exposures.__name__)):
        assert await buffer.flush() == 8
    assert await exposed_units(clean_database) == [f"user-{i}" for i in range(8)]
    assert buffer.refused == 2
    (refused,) = [entry for entry in logs if entry["event"] == "exposures refused by the database; dropped"]
    assert refused["log_level"] == "error"
    # Named by digest: a log line outlives the unit's erasure.
    assert {e["unit_digest"] for e in refused["exposures"]} == {unit_digest("a\x00b"), unit_digest("user-gone")}
    assert "user-gone" not in repr(refused)
    assert buffer.pending == 0
    buffer.record(experiment, 1, "user-later", "control")
    assert await buffer.flush() == 1  # nothing held back behind them
