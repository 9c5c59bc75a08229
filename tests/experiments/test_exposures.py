"""First exposures: once per unit however many concurrent renders, nothing lost on a graceful stop,
at most the unflushed buffer lost on a hard kill, and a bounded buffer when the database is away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry.app import create_app
from registry.db.engine import create_engine, create_sessionmaker
from registry.experiments.exposures import ExposureBuffer
from registry.settings import Settings
from tests.conftest import count_rows, serve_in_process
from tests.experiments.conftest import Client, flush_and_aggregate, make_experiment, units_queued_by_a_second_writer


async def render(client: Client, headers: dict[str, str], unit: str) -> str:
    response = await client.post(
        "/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": unit}, headers=headers
    )
    assert response.status_code == 200, response.text
    variant: str = response.json()["experiment"]["variant"]
    return variant


async def exposures_per_unit(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT unit, count(*) FROM exposures GROUP BY unit"))
        return {unit: count for unit, count in rows.all()}


async def test_concurrent_renders_record_each_unit_once(
    client: Client, setup: dict[str, str], settings: Settings, clean_database: AsyncEngine
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    units = [f"user-{i}" for i in range(60)]
    async with serve_in_process(create_app(settings)) as replica:
        await replica.get("/health")
        replicas = [client, replica]
        variants = await asyncio.gather(
            *(render(replicas[i % 2], setup, units[i % len(units)]) for i in range(8 * len(units)))
        )
        await flush_and_aggregate(replica)
    await flush_and_aggregate(client)
    assert await exposures_per_unit(clean_database) == dict.fromkeys(units, 1)
    by_unit: dict[str, set[str]] = {}
    for i, variant in enumerate(variants):
        by_unit.setdefault(units[i % len(units)], set()).add(variant)
    assert all(len(v) == 1 for v in by_unit.values())
    results = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    assert results["units"] == len(units)
    assert results["units_in_multiple_variants"] == 0


async def test_a_graceful_stop_writes_every_buffered_exposure(
    client: Client, setup: dict[str, str], settings: Settings, clean_database: AsyncEngine
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    async with serve_in_process(create_app(settings)) as replica:
        for i in range(25):
            await render(replica, setup, f"user-{i}")
        assert await count_rows(clean_database, "exposures") == 0
    assert await count_rows(clean_database, "exposures") == 25  # the shutdown ran the flush once more


@pytest.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def experiment_id(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT id FROM experiments"))).scalar_one())


async def test_a_hard_kill_loses_at_most_the_exposures_since_the_last_flush(
    client: Client,
    setup: dict[str, str],
    clean_database: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    experiment = await experiment_id(clean_database)
    buffer = ExposureBuffer(sessionmaker, max_pending=1000)
    for i in range(100):
        buffer.record(experiment, 1, f"user-{i}", "control")
    assert await buffer.flush() == 100
    for i in range(100, 130):
        buffer.record(experiment, 1, f"user-{i}", "control")
    lost = buffer.pending
    del buffer  # killed: no final flush
    assert lost == 30
    assert await count_rows(clean_database, "exposures") == 100
    # A restarted process records a lost unit again the next time it is routed.
    restarted = ExposureBuffer(sessionmaker, max_pending=1000)
    for i in range(130):
        restarted.record(experiment, 1, f"user-{i}", "control")
    await restarted.flush()
    assert await count_rows(clean_database, "exposures") == 130


async def test_repeats_are_dropped_in_memory(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    experiment = await experiment_id(clean_database)
    buffer = ExposureBuffer(sessionmaker, max_pending=1000)
    for _ in range(5):
        buffer.record(experiment, 1, "user-1", "control")
    assert buffer.pending == 1
    await buffer.flush()
    buffer.record(experiment, 1, "user-1", "control")
    assert buffer.pending == 0


async def test_written_exposures_are_remembered_for_at_least_a_buffers_worth_and_then_forgotten(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Repeats of written exposures are dropped in memory, within a bound: older ones are written again (a no-op)."""
    await make_experiment(client, setup, "greet-test", "greet")
    experiment = await experiment_id(clean_database)
    buffer = ExposureBuffer(sessionmaker, max_pending=100)

    async def write(units: range) -> None:
        for start in range(units.start, units.stop, 40):  # under half the buffer: no early flush in between
            for i in range(start, min(start + 40, units.stop)):
                buffer.record(experiment, 1, f"user-{i}", "control")
            await buffer.flush()

    await write(range(0, 150))
    for i in range(150):  # all of them still remembered
        buffer.record(experiment, 1, f"user-{i}", "control")
    assert buffer.pending == 0
    await write(range(150, 250))
    buffer.record(experiment, 1, "user-0", "control")  # two buffers' worth later: forgotten
    buffer.record(experiment, 1, "user-149", "control")
    assert buffer.pending == 1
    assert await buffer.flush() == 1
    assert await count_rows(clean_database, "exposures") == 250


async def test_only_the_exposures_stored_now_queue_their_units_for_the_aggregator(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Replicas often write the same exposures; only the first write changes anything to aggregate."""
    await make_experiment(client, setup, "greet-test", "greet")
    assert await units_queued_by_a_second_writer(sessionmaker) == {"user-3"}
    assert await count_rows(clean_database, "exposures") == 4


async def test_the_buffer_is_bounded_while_the_database_is_unreachable(settings: Settings) -> None:
    unreachable = create_engine(
        settings.model_copy(update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none"})
    )
    buffer = ExposureBuffer(create_sessionmaker(unreachable), max_pending=10)
    for i in range(25):
        buffer.record(1, 1, f"user-{i}", "control")
    with pytest.raises(ConnectionRefusedError):
        await buffer.flush()
    await buffer.stop()
    assert buffer.pending == 10
    assert buffer.dropped == 15
    await unreachable.dispose()


async def test_a_unit_with_a_nul_character_is_refused_before_it_reaches_the_buffer(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    """PostgreSQL text cannot hold NUL: one such unit in a batch would fail every exposure written with it."""
    await make_experiment(client, setup, "greet-test", "greet")
    await render(client, setup, "fine-unit")

    rendered = await client.post(
        "/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": "bad\u0000unit"}, headers=setup
    )
    resolved = await client.get("/v1/prompts/greet", params={"unit": "bad\u0000unit"}, headers=setup)
    await flush_and_aggregate(client)

    assert rendered.status_code == 422
    assert resolved.status_code == 422
    assert await exposures_per_unit(clean_database) == {"fine-unit": 1}


async def test_replicas_flushing_the_same_units_at_once_do_not_deadlock(
    client: Client, setup: dict[str, str], sessionmaker: async_sessionmaker[AsyncSession], clean_database: AsyncEngine
) -> None:
    """A user's requests reach several replicas, so their buffers often hold the same exposures.

    Written in the order each replica saw them, two flushes at once lock the same
    index entries in opposite orders and PostgreSQL aborts one as a deadlock.
    """
    await make_experiment(client, setup, "greet-test", "greet")
    experiment = await experiment_id(clean_database)
    for round_number in range(3):
        units = [f"user-{round_number}-{i}" for i in range(5000)]
        replicas = [ExposureBuffer(sessionmaker, max_pending=10_000) for _ in range(2)]
        for unit in units:
            replicas[0].record(experiment, 1, unit, "control")
        for unit in reversed(units):
            replicas[1].record(experiment, 1, unit, "control")
        await asyncio.gather(*(replica.flush() for replica in replicas))
    assert await count_rows(clean_database, "exposures") == 15_000


async def test_stop_lets_an_early_flush_under_way_finish_instead_of_cancelling_it(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """On SQLite a write cancelled mid-statement keeps the database's lock, and the final flushes after it fail."""
    await make_experiment(client, setup, "greet-test", "greet")
    experiment = await experiment_id(clean_database)
    buffer = ExposureBuffer(sessionmaker, max_pending=10)
    async with buffer._lock:  # the early flush waits here, as it would inside its write
        for i in range(5):  # half the bound: an early flush is started
            buffer.record(experiment, 1, f"user-{i}", "control")
        early = buffer._early_flush
        assert early is not None
        stopping = asyncio.ensure_future(buffer.stop())
        await asyncio.sleep(0)
        assert not stopping.done()  # stop waits for the flush under way
    await stopping
    assert not early.cancelled()
    assert await count_rows(clean_database, "exposures") == 5
