"""A worker that stops while one item is being stored and another waits on the backend (``EvalWorker.stop``).

The item being stored ends its transaction and is counted; the completion that waits is cancelled and charged
to the run; the run gives its lease up, so another worker takes it over at once. The item's
transaction is held (on SQLite inside a statement that runs until an event is set) until the stop has cancelled
the waiting completion: no timing. A run the stop cancels, its item still storing, gives its lease up too: the
transaction ends, rolled back, although on SQLite a statement is under way (a connection SQLAlchemy closes there
kept SQLite's write lock, so the lease's release failed and the lease only expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import structlog
from litestar import Litestar
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from structlog.testing import capture_logs

import registry.evals.runner
from registry.app import create_app
from registry.auth.keys import Scope
from registry.evals.repository import EvalRepository
from registry.evals.runner import Attempt, EvalWorker, Lease
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import AppClient, create_key, serve_in_process
from tests.embedded import embedded_settings
from tests.evals.conftest import answers, dataset, publish, start_run
from tests.evals.stand_in import StandIn
from tests.test_runtime_stop import fail_at_once_when_locked
from tests.waiting import eventually_async

WAIT = 60.0  # bounds a wait that fails the test rather than hang it; never reached when it passes
PRICES = (100_000.0, 1_000_000.0)  # per million tokens: 0.1 an input token, 1 an output token
HELD = "hold b"  # the stand-in answers this item only once ``released`` is set


@dataclass
class Served:
    app: Litestar
    client: AppClient
    admin: dict[str, str]
    engine: AsyncEngine
    server: StandIn

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"


@pytest.fixture
async def served(
    migrated_engine: AsyncEngine, settings: Settings, tmp_path: Path, stand_in: tuple[StandIn, str]
) -> AsyncIterator[Served]:
    """The registry on each kind of database, with the stand-in as backend; its own worker takes no part."""
    server, url = stand_in
    server.requests.clear()
    server.released.clear()
    fields: dict[str, Any] = {
        "backends": {"stand-in": backend(url, max_retries=0)},
        "eval_poll_seconds": 3600.0,
        "completion_usage_flush_seconds": 3600.0,
    }
    is_sqlite = migrated_engine.dialect.name == "sqlite"
    chosen = embedded_settings(tmp_path, **fields) if is_sqlite else settings.model_copy(update=fields)
    admin = await create_key(migrated_engine, (Scope.ADMIN,), "admin")
    app = create_app(chosen)
    try:
        async with serve_in_process(app) as client:
            yield Served(app, client, admin, migrated_engine, server)
    finally:
        server.released.set()  # the stand-in's held answer ends


class HeldWorker(EvalWorker):
    """A worker whose first item is stored in a transaction held open until ``release`` is set.

    It stores only once the other item's completion waits on the backend (SQLite has one connection, which the
    held transaction keeps); the transaction is held after its writes, on SQLite inside a statement that runs
    until then (as a slow one would). ``release`` is set when the stop has cancelled the waiting completion (it is
    charged to the run), unless ``released_by_the_stop`` is False. ``charging`` is set when a completion that ended
    while the item is held is charged to the run.
    """

    def __init__(self, *args: Any, server: StandIn, released_by_the_stop: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server = server
        self.released_by_the_stop = released_by_the_stop
        self.inside = asyncio.Event()
        self.release = threading.Event()
        self.held_stored = False
        self.charging = asyncio.Event()
        self.charges_cancelled = 0  # completions' charges whose item was cancelled while they were made

    async def _record(self, lease: Lease, rows: Sequence[dict[str, Any]]) -> None:
        if self.inside.is_set() or not rows:  # validation records no rows: every item's variables are valid
            await super()._record(lease, rows)
            return
        await eventually_async(self._held_item_asked, "the other item asking the backend")

        async def store(session: AsyncSession) -> None:
            await EvalRepository(session).record_items(lease.run_id, lease.token, rows)
            await self._held(session)

        await self._transaction(store)
        self.held_stored = True

    async def _held(self, session: AsyncSession) -> None:
        loop = asyncio.get_running_loop()
        give_up = time.monotonic() + WAIT

        def inside() -> int:
            loop.call_soon_threadsafe(self.inside.set)
            return 1

        def holding() -> int:
            return int(not self.release.wait(0.001) and time.monotonic() < give_up)

        if session.get_bind().dialect.name == "sqlite":
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            assert raw is not None
            await raw.create_function("inside", 0, inside)
            await raw.create_function("holding", 0, holding)
            # One row at a time, for as long as it is held: SQLite interrupts such a statement between rows.
            held = "WITH RECURSIVE held(n) AS (SELECT inside() UNION ALL SELECT n + 1 FROM held WHERE holding())"
            await session.execute(text(f"{held} SELECT max(n) FROM held"))
        else:
            inside()
            await asyncio.to_thread(self.release.wait, WAIT)

    async def _held_item_asked(self) -> bool:
        return self.server.asked(HELD) == 1

    async def _charge(self, run_id: int, attempt: Attempt) -> None:
        if self.inside.is_set():  # a completion ended while the item is held: the stop cancelled it, or it answered
            if self.released_by_the_stop:
                self.release.set()
            self.charging.set()
        try:
            await super()._charge(run_id, attempt)
        except asyncio.CancelledError:
            self.charges_cancelled += 1
            raise


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """The worker's logs, through a fresh logger (a cached one can escape ``capture_logs``)."""
    with capture_logs() as logs, patch.object(registry.evals.runner, "logger", structlog.get_logger("registry.evals")):
        yield logs


async def stored_items(engine: AsyncEngine, run_id: int) -> int:
    async with engine.connect() as connection:
        query = text("SELECT count(*) FROM eval_run_items WHERE run_id = :id")
        return int((await connection.execute(query, {"id": run_id})).scalar_one())


async def usage_records(served: Served) -> list[tuple[str, float]]:
    await served.app.state.runtime.completions.recorder.flush()
    async with served.engine.connect() as connection:
        rows = await connection.execute(text("SELECT status, cost FROM completions ORDER BY id"))
        return [(r.status, float(r.cost)) for r in rows]


def workers(served: Served, *, overrun: bool = False) -> tuple[HeldWorker, EvalWorker]:
    """Workers ``first`` (a ``HeldWorker``) and ``second`` on the app's runtime; on SQLite a write lock left held
    fails at once. With ``overrun``, the stop of ``first`` does not wait for a safe point and does not release the
    held item: its run is still working at the stop."""
    runtime = served.app.state.runtime
    if served.is_sqlite:
        event.listen(runtime.engine.sync_engine, "connect", fail_at_once_when_locked)
    parts = (runtime.settings, runtime.sessionmaker, runtime.completions, runtime.prompts)
    first = HeldWorker(*parts, owner="first", server=served.server, released_by_the_stop=not overrun)
    if overrun:
        first.stop_wait_seconds = 0.0
    return first, EvalWorker(*parts, owner="second")


def errors_logged(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors among the worker's logs, a locked database's included."""
    return [entry for entry in logs if "database is locked" in str(entry) or entry["log_level"] == "error"]


async def test_a_stop_mid_item_stores_the_item_in_hand_cancels_the_waiting_one_and_gives_the_lease_up(
    served: Served,
) -> None:
    client, admin = served.client, served.admin
    first, second = workers(served)
    name = f"stopping-{uuid.uuid4().hex[:8]}"
    version = await publish(client, admin, name, prices=PRICES)
    await dataset(client, admin, f"{name}-cases", answers(("a", "a"), (HELD, HELD)))
    run = await start_run(client, admin, prompt=name, version=version, dataset={"name": f"{name}-cases"}, concurrency=2)

    assert await first.poll() == [run["id"]]
    await asyncio.wait_for(first.inside.wait(), WAIT)  # item "a" is being stored; item "hold b" waits on the backend
    with captured_logs() as logs:
        await first.stop()

    assert first.held_stored
    assert errors_logged(logs) == []
    stopped = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert (stopped["status"], stopped["items_done"], stopped["items_passed"]) == ("running", 1, 1)
    assert await stored_items(served.engine, run["id"]) == 1
    records = await usage_records(served)
    assert sorted(status for status, _ in records) == ["cancelled", "ok"]
    assert stopped["cost"] == pytest.approx(sum(cost for _, cost in records))

    assert await second.poll() == [run["id"]]  # at once: the stopped worker gave the lease up
    served.server.released.set()
    await asyncio.wait_for(second.active[run["id"]], WAIT)
    done = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 2, 2)
    assert await stored_items(served.engine, run["id"]) == 2
    assert served.server.asked(HELD) == 2  # the cancelled item was asked again
    assert served.server.asked("a") == 1  # the stored one was not
    assert done["cost"] == pytest.approx(sum(cost for _, cost in await usage_records(served)))
    await second.stop()


# On SQLite the item is cancelled inside its statement: the transaction still ends, rolled back, and the
# database is writable at once (a lock left held fails the release at once: ``fail_at_once_when_locked``).
async def test_a_run_that_reaches_no_safe_point_within_the_stop_wait_is_cancelled_and_its_lease_given_up(
    served: Served,
) -> None:
    client, admin = served.client, served.admin
    first, second = workers(served, overrun=True)
    name = f"overrun-{uuid.uuid4().hex[:8]}"
    version = await publish(client, admin, name)
    await dataset(client, admin, f"{name}-cases", answers(("a", "a"), (HELD, HELD)))
    run = await start_run(client, admin, prompt=name, version=version, dataset={"name": f"{name}-cases"}, concurrency=2)

    assert await first.poll() == [run["id"]]
    await asyncio.wait_for(first.inside.wait(), WAIT)
    with captured_logs() as logs:
        await first.stop()  # returns with the item's transaction still held: the stop's wait is bounded
    held_at_stop = not first.release.is_set()
    first.release.set()

    assert held_at_stop
    assert not first.held_stored
    assert [e["run"] for e in logs if e["event"] == "evaluation run still working at stop; cancelled"] == [run["id"]]
    assert errors_logged(logs) == []
    assert await stored_items(served.engine, run["id"]) == 0  # the item's transaction was rolled back
    assert await second.poll() == [run["id"]]  # at once: the stop gave the lease up
    served.server.released.set()
    await asyncio.wait_for(second.active[run["id"]], WAIT)
    done = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 2, 2)
    await second.stop()


# The charge of a completion waits for the item in hand to end (on SQLite for the one connection it holds, on
# PostgreSQL for the run's row it updated); the stop cancels the run meanwhile, and the charge is still made.
async def test_a_completions_charge_waiting_for_the_database_survives_the_cancellation_of_its_run(
    served: Served,
) -> None:
    client, admin = served.client, served.admin
    first, _ = workers(served, overrun=True)
    name = f"charged-{uuid.uuid4().hex[:8]}"
    version = await publish(client, admin, name, prices=PRICES)
    # The judge answers what the item expects: item "b"'s judge waits on the backend, after "b" was answered.
    judge = await publish(client, admin, f"{name}-judge", template="{{ expected }}", prices=PRICES)
    await dataset(client, admin, f"{name}-cases", answers(("a", "a"), ("b", HELD)))
    scorers = [{"kind": "judge", "prompt": f"{name}-judge", "version": judge}]
    run = await start_run(
        client,
        admin,
        prompt=name,
        version=version,
        dataset={"name": f"{name}-cases"},
        scorers=scorers,
        concurrency=2,
    )

    assert await first.poll() == [run["id"]]
    await asyncio.wait_for(first.inside.wait(), WAIT)  # item "a" is being stored; "b"'s judge waits on the backend
    served.server.released.set()  # "b"'s judge answers; its charge waits for the item in hand
    await asyncio.wait_for(first.charging.wait(), WAIT)
    with captured_logs() as logs:
        await first.stop()
    first.release.set()

    assert [e["run"] for e in logs if e["event"] == "evaluation run still working at stop; cancelled"] == [run["id"]]
    assert first.charges_cancelled == 1  # "b"'s judge's charge was under way when the stop cancelled the run
    assert errors_logged(logs) == []
    assert await stored_items(served.engine, run["id"]) == 0  # the item in hand was rolled back, and charged
    records = await usage_records(served)
    assert sorted(status for status, _ in records) == ["ok", "ok", "ok", "ok"]
    stopped = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert stopped["cost"] == pytest.approx(sum(cost for _, cost in records))
    # Three answers of a word, and the judge's of two ("hold b").
    assert stopped["cost"] == pytest.approx(3 * (5 * 0.1 + 1) + (5 * 0.1 + 2))
