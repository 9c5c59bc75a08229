"""A held outcome event the database refuses is dropped alone: it used to fail the write of everything held on
every try, so no held event was written again until the process ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db.engine import create_engine, create_sessionmaker
from registry.experiments.event_buffer import EventBuffer, HeldBatch
from registry.experiments.schemas import EventIn
from registry.settings import Settings


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


def events(*units: str) -> list[EventIn]:
    now = datetime.now(UTC)
    # Built directly, as the door's check would not let a NUL through.
    return [EventIn(unit=unit, metric="m", idempotency_key=f"k-{unit}", timestamp=now) for unit in units]


async def test_an_event_the_database_refuses_is_dropped_and_the_others_are_written(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    written: list[str] = []

    async def write_units(session: AsyncSession, batches: list[HeldBatch]) -> int:
        units = [event.unit for batch in batches for event in batch.events]
        for unit in units:
            await session.execute(text("SELECT CAST(:unit AS text)"), {"unit": unit})  # PostgreSQL refuses a NUL
        written.extend(units)
        return 0

    registry = CollectorRegistry()
    buffer = EventBuffer(sessionmaker, write_units, max_pending=100, metrics_registry=registry)
    buffer.hold(events("u1", "u2", "u3"), datetime.now(UTC))
    buffer.hold(events("u4", "a\x00b", "u5"), datetime.now(UTC))
    buffer.hold(events("u6", "u7"), datetime.now(UTC))

    assert await buffer.flush() == 7
    assert sorted(written) == [f"u{i}" for i in range(1, 8)]
    assert buffer.pending == 0
    assert registry.get_sample_value("registry_experiment_buffered_events_refused_total") == 1
