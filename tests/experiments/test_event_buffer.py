"""The bounded buffer of outcome events held while the database is unreachable."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from registry.db.engine import create_engine, create_sessionmaker
from registry.experiments.event_buffer import EventBuffer, HeldBatch
from registry.experiments.schemas import EventIn
from registry.lib.errors import DatabaseUnavailableError
from registry.settings import Settings
from tests.conftest import free_port


def events(count: int, prefix: str = "e") -> list[EventIn]:
    now = datetime.now(UTC)
    return [EventIn(unit=f"u{n}", metric="m", idempotency_key=f"{prefix}{n}", timestamp=now) for n in range(count)]


async def write_nothing(session: AsyncSession, batches: list[HeldBatch]) -> int:
    await session.execute(text("SELECT 1"))  # the database is not there: this fails
    return 0


def unreachable_buffer(max_pending: int, registry: CollectorRegistry) -> EventBuffer:
    settings = Settings(database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    sessionmaker = create_sessionmaker(create_engine(settings))
    return EventBuffer(sessionmaker, write_nothing, max_pending=max_pending, metrics_registry=registry)


def test_a_batch_that_does_not_fit_is_refused_whole_and_counted() -> None:
    registry = CollectorRegistry()
    buffer = unreachable_buffer(10, registry)
    buffer.hold(events(6), datetime.now(UTC))

    with pytest.raises(DatabaseUnavailableError):
        buffer.hold(events(5, "f"), datetime.now(UTC))

    assert buffer.pending == 6
    assert registry.get_sample_value("registry_experiment_events_dropped_total") == 5
    assert registry.get_sample_value("registry_experiment_events_buffered_total") == 6


async def test_a_failed_write_keeps_the_events_for_the_next_try() -> None:
    registry = CollectorRegistry()
    buffer = unreachable_buffer(10, registry)
    buffer.hold(events(4), datetime.now(UTC))

    with pytest.raises(ConnectionRefusedError):
        await buffer.flush()

    assert buffer.pending == 4
