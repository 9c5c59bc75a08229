"""A run survives its worker: a dead owner's run is taken over, a lost lease writes nothing, an outage waits.

Two workers are built here as the runtime builds one, on the same database; the app's own worker
polls too rarely to take part. Each item must end up scored exactly once, and items already scored
must not be asked of the backend again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.db.base import utcnow
from registry.evals.runner import EvalWorker
from registry.runtime import Runtime
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import AppClient, count_rows, serve_in_process
from tests.evals.conftest import dataset, finished, publish, start_run
from tests.evals.stand_in import StandIn
from tests.waiting import eventually_async

ITEMS = [{"variables": {"answer": a}, "expected": a} for a in ("a", "b", "c", "hold-d", "hold-e", "hold-f")]


@pytest.fixture
async def app(settings: Settings, clean_database: AsyncEngine, stand_in: tuple[StandIn, str]) -> Litestar:
    server, url = stand_in
    server.requests.clear()
    server.released.clear()
    return create_app(
        settings.model_copy(update={"backends": {"stand-in": backend(url, max_retries=0)}, "eval_poll_seconds": 3600.0})
    )


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AppClient]:
    async with serve_in_process(app) as http:
        yield http


def worker(app: Litestar, owner: str) -> EvalWorker:
    runtime: Runtime = app.state.runtime
    return EvalWorker(runtime.settings, runtime.sessionmaker, runtime.completions, runtime.prompts, owner=owner)


async def run_with_three_done(client: AppClient, admin: dict[str, str], first: EvalWorker) -> dict[str, Any]:
    """A run of six items whose first owner has scored three and waits on the fourth."""
    version = await publish(client, admin, "durable")
    await dataset(client, admin, "durable-cases", ITEMS)
    run = await start_run(
        client, admin, prompt="durable", version=version, dataset={"name": "durable-cases"}, concurrency=1
    )
    assert await first.poll() == [run["id"]]

    async def three_done() -> bool:
        body = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
        return bool(body["items_done"] == 3)

    await eventually_async(three_done, "three items scored")
    return run


async def expire_lease(engine: AsyncEngine, run_id: int) -> None:
    """What time does to a lease nobody renews."""
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE eval_runs SET lease_expires_at = :past WHERE id = :id"),
            {"past": utcnow() - timedelta(seconds=1), "id": run_id},
        )


async def scored_positions(engine: AsyncEngine, run_id: int) -> list[int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT position FROM eval_run_items WHERE run_id = :id ORDER BY position"), {"id": run_id}
        )
        return [row[0] for row in rows]


async def test_a_killed_owners_run_is_taken_over_and_each_item_scored_once(
    app: Litestar,
    client: AppClient,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    stand_in: tuple[StandIn, str],
) -> None:
    first, second = worker(app, "first"), worker(app, "second")
    run = await run_with_three_done(client, admin, first)
    for task in first.active.values():  # the process dies: nothing is released
        task.cancel()
    assert await second.poll() == []  # the lease is still live
    await expire_lease(clean_database, run["id"])
    stand_in[0].released.set()
    assert await second.poll() == [run["id"]]
    done = await finished(client, admin, run["id"])
    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 6, 6)
    assert await scored_positions(clean_database, run["id"]) == [1, 2, 3, 4, 5, 6]
    assert [stand_in[0].asked(a) for a in ("a", "b", "c")] == [1, 1, 1]  # not asked again after the takeover
    await second.stop()


async def test_an_owner_that_lost_its_lease_records_nothing_more(
    app: Litestar,
    client: AppClient,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    stand_in: tuple[StandIn, str],
) -> None:
    first, second = worker(app, "first"), worker(app, "second")
    run = await run_with_three_done(client, admin, first)
    await expire_lease(clean_database, run["id"])  # the first owner stalled past its lease, still alive
    assert await second.poll() == [run["id"]]
    stand_in[0].released.set()  # both now finish item 4; only the owner's answer counts
    done = await finished(client, admin, run["id"])
    for task in list(first.active.values()):
        await task
    assert (done["status"], done["items_done"]) == ("completed", 6)
    assert await scored_positions(clean_database, run["id"]) == [1, 2, 3, 4, 5, 6]
    assert await count_rows(clean_database, "eval_run_items") == 6
    assert stand_in[0].asked("hold-d") == 2  # both owners asked; only the second one's answer was stored
    await second.stop()


async def test_a_stopping_worker_gives_its_runs_up_at_once(
    app: Litestar, client: AppClient, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    first, second = worker(app, "first"), worker(app, "second")
    run = await run_with_three_done(client, admin, first)
    await first.stop()
    stand_in[0].released.set()
    assert await second.poll() == [run["id"]]
    done = await finished(client, admin, run["id"])
    assert (done["items_done"], done["items_passed"]) == (6, 6)
    await second.stop()


async def test_a_cancelled_run_keeps_what_was_scored_and_its_worker_stops(
    app: Litestar, client: AppClient, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    first = worker(app, "first")
    run = await run_with_three_done(client, admin, first)
    cancelled = await client.post(f"/v1/evals/runs/{run['id']}/cancel", headers=admin)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    stand_in[0].released.set()  # item 4 finishes; the cancelled run takes no more
    for task in list(first.active.values()):
        await task
    body = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert (body["status"], body["items_done"]) == ("cancelled", 3)
    assert stand_in[0].asked("hold-e") == 0
    assert await first.poll() == []


async def test_a_stop_while_a_completion_reads_its_run_cancels_that_completion_before_it_is_asked(
    app: Litestar,
    client: AppClient,
    admin: dict[str, str],
    stand_in: tuple[StandIn, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop that came while an item's completion read its run (a database read before each completion) was not
    seen: the completion was asked after it, uncancelled, and waited for its first token (a backend outage for
    the run, which then waited out its backoff instead of being given up to the other worker at once)."""
    first, second = worker(app, "first"), worker(app, "second")
    reading, read = asyncio.Event(), asyncio.Event()
    check_run = EvalWorker._check_run

    async def held_check(self: EvalWorker, lease: Any) -> None:
        await check_run(self, lease)
        if self is first and stand_in[0].asked("c") == 1 and not reading.is_set():  # the fourth item's read
            reading.set()
            await read.wait()

    monkeypatch.setattr(EvalWorker, "_check_run", held_check)
    run = await run_with_three_done(client, admin, first)
    await reading.wait()
    stopping = asyncio.create_task(first.stop())
    await eventually_async(lambda: _true(first._stopping), "the first worker stopping")
    read.set()
    await stopping
    assert stand_in[0].asked("hold-d") == 0  # never asked of the backend by the stopping worker
    stand_in[0].released.set()
    assert await second.poll() == [run["id"]]
    done = await finished(client, admin, run["id"])
    assert (done["items_done"], done["items_passed"]) == (6, 6)
    await second.stop()


async def _true(value: bool) -> bool:
    return value
