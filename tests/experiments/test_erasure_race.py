"""A unit's erasure against the replicas' writes, on PostgreSQL and on SQLite.

A replica the news of an erasure has not reached yet (pub/sub is late) may write the unit's exposures, events or
completions after the erasure committed: each write, once committed, is checked against the erasures' audit
entries, and what the erasure missed is erased (or anonymised) again. The replica is a second engine on the same
database with buffers of its own, which hear of no erasure. And an erasure that fails (its transaction refused by
the database) is remembered nowhere: the unit's data recorded after it is written as usual.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry.completions.usage import UsageRecorder
from registry.db.engine import create_engine, create_sessionmaker
from registry.experiments.aggregator import UnitRecomputer
from registry.experiments.exposures import ExposureBuffer, erase_written_again
from registry.experiments.ingest import EventLimits, EventService
from registry.experiments.privacy_digest import RecentErasures, unit_digest
from registry.experiments.repository import ExposureRow, IngestRepository
from registry.experiments.schemas import EventBatch
from registry.lib.changes import Change
from registry.settings import Settings
from tests.embedded import serve_on_engine_kind
from tests.experiments.conftest import (
    Client,
    flush_and_aggregate,
    make_experiment,
    make_metric,
    make_prompt,
    runtime_of,
)
from tests.waiting import eventually_async

PATIENCE_SECONDS = 10  # a hang guard only
FIELDS = {"experiment_exposure_flush_seconds": 3600.0, "experiment_statistics_seconds": 3600.0}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def served(
    migrated_engine: AsyncEngine, settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    """The app, with 'greet-test' running on 'greet' (metric 'converted'), and one unit exposed and converted
    that stays, so the results have something to count."""
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, **FIELDS) as (client, admin):
        await make_prompt(client, admin, "greet")
        await make_metric(client, admin, "converted")
        await make_experiment(client, admin, "greet-test", "greet")
        kept = unique("kept")
        await render(client, admin, kept)
        await post_event(client, admin, kept)
        yield client, admin


@pytest.fixture
async def replica(served: tuple[Client, dict[str, str]]) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions of another replica: an engine of its own on the app's database."""
    engine = create_engine(runtime_of(served[0].app).settings)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def render(client: Client, headers: dict[str, str], unit: str) -> None:
    body = {"variables": {"x": "a"}, "unit": unit}
    response = await client.post("/v1/prompts/greet/render", json=body, headers=headers)
    assert response.status_code == 200, response.text


def event(unit: str) -> dict[str, str]:
    timestamp = datetime.now(UTC).isoformat()
    return {"unit": unit, "metric": "converted", "idempotency_key": unique("c"), "timestamp": timestamp}


async def post_event(client: Client, headers: dict[str, str], unit: str) -> None:
    response = await client.post("/v1/events", json={"events": [event(unit)]}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


async def erase(client: Client, headers: dict[str, str], unit: str) -> None:
    response = await client.delete(f"/v1/units/{unit}", headers=headers)
    assert response.status_code == 200, response.text


async def assert_erased(client: Client, headers: dict[str, str], unit: str) -> None:
    """After the app's flushes and the aggregation, nothing is held on ``unit`` and the results count only the
    unit that stays."""
    await runtime_of(client.app).experiments.events.flush()
    await flush_and_aggregate(client)
    response = await client.get(f"/v1/units/{unit}", headers=headers)
    assert response.status_code == 404, response.text
    results = (await client.get("/v1/experiments/greet-test/results", headers=headers)).json()
    assert results["units"] == 1


def completion(unit: str) -> dict[str, Any]:
    return {
        "prompt": "greet",
        "unit": unit,
        "request_id": f"req-{unit}",
        "status": "ok",
        "output_tokens": 2,
        "cost": 0.5,
        "prompt_text": "Hi",
        "completion_text": "Hello",
        "created_at": datetime.now(UTC),
    }


async def completions_of(sessionmaker: async_sessionmaker[AsyncSession], request_id: str) -> list[tuple[Any, ...]]:
    query = text("SELECT unit, prompt_text, completion_text, output_tokens FROM completions WHERE request_id = :r")
    anonymised = text("SELECT count(*) FROM completions WHERE request_id IS NULL AND output_tokens = 2")
    async with sessionmaker() as session:
        named = [tuple(row) for row in (await session.execute(query, {"r": request_id})).all()]
        return [*named, ("anonymised", (await session.execute(anonymised)).scalar_one())]


async def test_an_exposure_written_by_a_replica_the_erasure_news_has_not_reached_is_erased_again(
    served: tuple[Client, dict[str, str]], replica: async_sessionmaker[AsyncSession]
) -> None:
    client, admin = served
    experiment = runtime_of(client.app).experiments.router.running("greet-test")
    assert experiment is not None
    erased = unique("in-flight")
    buffer = ExposureBuffer(replica, max_pending=100)  # hears of no erasure
    buffer.record(experiment.id, experiment.phase, erased, "control")  # a request it served routed the unit

    await erase(client, admin, erased)  # committed; the news has not reached the replica
    await buffer.flush()

    await assert_erased(client, admin, erased)


# PostgreSQL only: SQLite runs one writing transaction at a time, so there the erasure waits for the batch to commit.
@pytest.mark.parametrize("migrated_engine", ["postgresql"], indirect=True)
async def test_a_batch_a_replica_commits_after_the_erasure_and_before_the_news_leaves_nothing_of_the_unit(
    served: tuple[Client, dict[str, str]], replica: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure's delete misses the replica's batch (inserted, not yet committed) and commits first."""
    client, admin = served
    experiment = runtime_of(client.app).experiments.router.running("greet-test")
    assert experiment is not None
    erased = unique("in-flight")
    inserted, commit = asyncio.Event(), asyncio.Event()
    insert = IngestRepository.insert_exposures_and_queue_units

    async def insert_then_wait(self: IngestRepository, rows: Sequence[ExposureRow]) -> None:
        await insert(self, rows)
        if any(row[2] == erased for row in rows):
            inserted.set()
            await commit.wait()

    monkeypatch.setattr(IngestRepository, "insert_exposures_and_queue_units", insert_then_wait)
    buffer = ExposureBuffer(replica, max_pending=100)  # hears of no erasure
    buffer.record(experiment.id, experiment.phase, erased, "control")
    writing = asyncio.create_task(buffer.flush())
    await asyncio.wait_for(inserted.wait(), timeout=PATIENCE_SECONDS)

    await erase(client, admin, erased)
    commit.set()
    await asyncio.wait_for(writing, timeout=PATIENCE_SECONDS)

    await assert_erased(client, admin, erased)


# PostgreSQL only: SQLite runs one writing transaction at a time, so there the batch waits for the erasure to commit.
@pytest.mark.parametrize("migrated_engine", ["postgresql"], indirect=True)
async def test_a_batch_committed_while_the_erasure_is_under_way_is_checked_once_the_erasure_commits(
    served: tuple[Client, dict[str, str]], replica: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure deleted (missing the batch, not yet written) and has not committed when the replica's batch
    commits and is checked: the check waits for the erasure, then finds it."""
    client, admin = served
    experiment = runtime_of(client.app).experiments.router.running("greet-test")
    assert experiment is not None
    erased = unique("in-flight")
    deleted, release = asyncio.Event(), asyncio.Event()
    recompute = UnitRecomputer.recompute

    async def recompute_then_wait(self: UnitRecomputer, units: Sequence[str]) -> Any:
        if erased in units:  # the erasure's, after its delete
            deleted.set()
            await release.wait()
        return await recompute(self, units)

    monkeypatch.setattr(UnitRecomputer, "recompute", recompute_then_wait)
    erasing = asyncio.create_task(erase(client, admin, erased))
    await asyncio.wait_for(deleted.wait(), timeout=PATIENCE_SECONDS)
    buffer = ExposureBuffer(replica, max_pending=100)  # hears of no erasure
    buffer.record(experiment.id, experiment.phase, erased, "control")
    flushing = asyncio.create_task(buffer.flush())

    async def done_or_waiting_for_the_erasure() -> bool:
        if flushing.done():
            return True
        async with replica() as session:
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            return bool((await session.execute(text(waiting))).scalar_one())

    await eventually_async(done_or_waiting_for_the_erasure, "the replica's check to end or wait for the erasure")
    release.set()
    await asyncio.wait_for(erasing, timeout=PATIENCE_SECONDS)
    await asyncio.wait_for(flushing, timeout=PATIENCE_SECONDS)

    await assert_erased(client, admin, erased)


async def test_events_written_by_a_replica_the_erasure_news_has_not_reached_are_erased_again(
    served: tuple[Client, dict[str, str]], replica: async_sessionmaker[AsyncSession]
) -> None:
    client, admin = served
    erased = unique("in-flight")
    await render(client, admin, erased)
    await erase(client, admin, erased)
    erasures = RecentErasures()  # the replica's: the news has not reached it
    limits = EventLimits.of(runtime_of(client.app).settings)

    async with replica() as session, session.begin():  # the app reports an outcome through that replica
        answer = await EventService(session, limits, erasures=erasures).record(EventBatch(events=[event(erased)]))
    assert answer.accepted == 1
    await erase_written_again(replica, erasures)  # its next flush

    await assert_erased(client, admin, erased)
    assert erasures.covers(unit_digest(erased), time.time())  # learned: its next events are dropped unwritten


async def test_a_completion_written_by_a_replica_the_erasure_news_has_not_reached_is_anonymised_again(
    served: tuple[Client, dict[str, str]], replica: async_sessionmaker[AsyncSession]
) -> None:
    client, admin = served
    erased = unique("in-flight")
    recorder = UsageRecorder(replica)  # hears of no erasure
    recorder.add(completion(erased))  # a completion in flight during the erasure

    await erase(client, admin, erased)
    await recorder.flush()

    assert await completions_of(replica, f"req-{erased}") == [("anonymised", 1)]
    recorder.add(completion(erased))  # learned: the next one is buffered without the unit
    await recorder.flush()
    assert await completions_of(replica, f"req-{erased}") == [("anonymised", 2)]


@asynccontextmanager
async def erasure_refused(sessionmaker: async_sessionmaker[AsyncSession], unit: str) -> AsyncIterator[None]:
    """The database refuses the audit entry of ``unit``'s erasure (a trigger), so the erasure's transaction fails
    at its last write and rolls back."""
    name = f"refuse_{uuid.uuid4().hex[:12]}"
    digest = unit_digest(unit)
    async with sessionmaker() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(
                text(
                    f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.resource_name = '{digest}' THEN RAISE EXCEPTION 'erasure refused'; END IF; "
                    "RETURN NEW; END $$"
                )
            )
            await session.execute(
                text(f"CREATE TRIGGER {name} BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION {name}()")
            )
            drops = [f"DROP TRIGGER {name} ON audit_log", f"DROP FUNCTION {name}()"]
        else:
            await session.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE INSERT ON audit_log WHEN NEW.resource_name = '{digest}' "
                    "BEGIN SELECT RAISE(ABORT, 'erasure refused'); END"
                )
            )
            drops = [f"DROP TRIGGER {name}"]
    try:
        yield
    finally:
        async with sessionmaker() as session, session.begin():
            for drop in drops:
                await session.execute(text(drop))


async def test_an_erasure_that_fails_leaves_the_units_later_data_to_be_written(
    served: tuple[Client, dict[str, str]], replica: async_sessionmaker[AsyncSession]
) -> None:
    client, admin = served
    runtime = runtime_of(client.app)
    unit = unique("kept-after-failure")
    published: list[Change] = []
    runtime.bus.subscribe(published.append)

    async with erasure_refused(replica, unit):
        refused = await client.delete(f"/v1/units/{unit}", headers=admin)
    assert refused.status_code != 200, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")

    await render(client, admin, unit)
    await post_event(client, admin, unit)
    runtime.completions.recorder.add(completion(unit))
    await runtime.completions.recorder.flush()
    await flush_and_aggregate(client)

    held = (await client.get(f"/v1/units/{unit}", headers=admin)).json()
    assert [exposure["experiment"] for exposure in held["exposures"]] == ["greet-test"]
    assert [item["metric"] for item in held["events"]] == ["converted"]
    assert held["completions"]["count"] == 1
    assert (await client.get("/v1/experiments/greet-test/results", headers=admin)).json()["units"] == 2
    assert unit_digest(unit) not in {change.name for change in published}  # nor did another replica hear of it
