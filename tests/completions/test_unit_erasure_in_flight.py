"""An erasure wins over completions and usage writes under way (``registry.completions.usage``).

A completion in flight during its unit's erasure records its usage after the erasure: it is written without the
unit, its request id and texts. A batch of usage records taken out of the buffer before the erasure and committed
after it is anonymised too: the erasing process waits for it before its own update (which counts it), and another
replica, which hears of the erasure by the unit's digest, anonymises it again once it committed. Each case is held
at a chosen point with an event (no timing), on PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry.completions.usage import UsageRecorder
from registry.db.engine import create_sessionmaker
from registry.experiments.privacy import UnitDataService
from registry.experiments.privacy_digest import unit_digest
from registry.settings import Settings
from tests.completions.cached_registry import SHAPES, CachedRegistry, serve_cached_registry
from tests.completions.conftest import WAIT, HeldBackend, backend, publish, unique, until
from tests.conftest import TEST_ACTOR

ROWS = "SELECT unit, request_id, prompt_text, completion_text, output_tokens FROM completions ORDER BY id"


async def rows_of(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in (await connection.execute(text(ROWS))).all()]


@pytest.fixture(params=SHAPES)
async def served(
    request: pytest.FixtureRequest, settings: Settings, clean_database: AsyncEngine, tmp_path: Path, held: HeldBackend
) -> AsyncIterator[CachedRegistry]:
    fields = {"backends": {"held": backend(held.url)}}
    async with serve_cached_registry(request.param, settings, tmp_path, **fields) as registry:
        yield registry


async def test_a_completion_answered_after_its_units_erasure_is_written_without_it(
    served: CachedRegistry, held: HeldBackend
) -> None:
    client, admin = served.client, served.admin
    await publish(client, admin, backend="held", model=unique("ok"), store_io=True)
    unit = f"ada-{uuid.uuid4().hex[:8]}"
    body = {"variables": {"name": "Ada Lovelace"}, "unit": unit}

    in_flight = asyncio.create_task(client.post("/v1/prompts/greet/complete", json=body, headers=admin))
    assert await asyncio.to_thread(held.arrived.wait, WAIT), "the completion never reached the backend"
    erased = await asyncio.wait_for(client.delete(f"/v1/units/{unit}", headers=admin), WAIT)
    held.release.set()
    answered = await asyncio.wait_for(in_flight, WAIT)
    written = await client.get("/v1/usage", params={"group_by": "prompt"}, headers=admin)  # writes the buffer

    assert erased.status_code == 200, erased.text
    assert answered.status_code == 200, answered.text
    assert written.json()["items"][0]["requests"] == 1
    rows = await rows_of(served.engine)
    assert [row[:4] for row in rows] == [(None, None, None, None)]
    assert rows[0][4] > 0  # what usage counts stays
    assert (await client.get(f"/v1/units/{unit}", headers=admin)).status_code == 404


async def test_the_erasure_change_names_the_units_digest_not_the_unit(settings: Settings, tmp_path: Path) -> None:
    """Without Redis the change is kept in the change log, where other processes read it."""
    async with serve_cached_registry("embedded", settings, tmp_path) as registry:
        erased = await registry.client.delete("/v1/units/carol@example.com", headers=registry.admin)
        async with registry.engine.connect() as connection:
            logged = await connection.execute(text("SELECT name FROM change_log WHERE action = 'unit_erased'"))
            names = [name for (name,) in logged.all()]

    assert erased.status_code == 200, erased.text
    assert names == [unit_digest("carol@example.com")]


class HeldWrite:
    """Sessions whose first statement waits for ``release``: a usage batch taken out of the buffer, not yet
    written (no connection held, no transaction begun)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        held = self

        class HeldSession(AsyncSession):
            async def execute(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                if not held.arrived.is_set():
                    held.arrived.set()
                    await held.release.wait()
                return await super().execute(*args, **kwargs)

        self.sessionmaker = async_sessionmaker(engine, class_=HeldSession, expire_on_commit=False, autoflush=False)


def completion(unit: str, name: str) -> dict[str, Any]:
    return {
        "prompt": "greet",
        "unit": unit,
        "request_id": f"req-{unit}",
        "status": "ok",
        "output_tokens": 2,
        "cost": 0.5,
        "prompt_text": f"Hi {name}",
        "completion_text": "Hello",
    }


async def flush_held(engine: AsyncEngine) -> tuple[HeldWrite, UsageRecorder, asyncio.Task[None]]:
    """A recorder holding ada's and bob's completions, its flush started and held at its write."""
    write = HeldWrite(engine)
    recorder = UsageRecorder(write.sessionmaker)
    recorder.add(completion("ada", "Ada Lovelace"))
    recorder.add(completion("bob", "Bob"))
    flushing = asyncio.create_task(recorder.flush())
    await asyncio.wait_for(write.arrived.wait(), WAIT)
    return write, recorder, flushing


async def test_a_usage_batch_being_written_during_this_processs_erasure_is_anonymised_and_counted(
    migrated_engine: AsyncEngine,
) -> None:
    write, recorder, flushing = await flush_held(migrated_engine)

    async def erase() -> Any:
        async with create_sessionmaker(migrated_engine)() as session, session.begin():
            service = UnitDataService(session, {}, grace=timedelta(0), usage=recorder)
            return await service.erase("ada", TEST_ACTOR)

    erasing = asyncio.create_task(erase())

    async def waiting_or_done() -> bool:
        return erasing.done() or bool(recorder._erasing_here)  # the erasure waits for the batch being written

    await until(waiting_or_done, "the erasure to wait for the usage write")
    write.release.set()
    await asyncio.wait_for(flushing, WAIT)
    erased = await asyncio.wait_for(erasing, WAIT)

    assert await rows_of(migrated_engine) == [
        (None, None, None, None, 2),
        ("bob", "req-bob", "Hi Bob", "Hello", 2),
    ]
    assert (erased.completions, erased.completion_texts) == (1, 1)


async def test_a_usage_batch_being_written_when_another_replica_erases_its_unit_is_anonymised_once_written(
    migrated_engine: AsyncEngine,
) -> None:
    write, recorder, flushing = await flush_held(migrated_engine)

    async with create_sessionmaker(migrated_engine)() as session, session.begin():  # the other replica
        erased = await UnitDataService(session, {}, grace=timedelta(0)).erase("ada", TEST_ACTOR)
    assert recorder.forget_unit(unit_digest("ada")) == (0, 0)  # as the change reaches this one: nothing buffered
    write.release.set()
    await asyncio.wait_for(flushing, WAIT)

    assert erased.completions == 0  # nothing of it was written yet
    assert await rows_of(migrated_engine) == [
        (None, None, None, None, 2),
        ("bob", "req-bob", "Hi Bob", "Hello", 2),
    ]


async def test_a_record_added_after_its_units_erasure_is_buffered_without_it(migrated_engine: AsyncEngine) -> None:
    recorder = UsageRecorder(create_sessionmaker(migrated_engine))
    recorder.add(completion("ada", "Ada"))
    assert recorder.forget_unit(unit_digest("ada")) == (1, 1)
    recorder.add(completion("ada", "Ada Lovelace"))  # a completion in flight during the erasure
    recorder.add(completion("bob", "Bob"))
    assert recorder.forget_unit(unit_digest("ada")) == (0, 0)  # buffered without the unit
    await recorder.flush()

    assert await rows_of(migrated_engine) == [
        (None, None, None, None, 2),
        (None, None, None, None, 2),
        ("bob", "req-bob", "Hi Bob", "Hello", 2),
    ]
