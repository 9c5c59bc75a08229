"""A dataset version exported right after it was created comes back whole although the read replica lags: what the
replica does not have yet is read from the primary. A version the replica has is still exported from the replica.
A run's events, asked for right after the run was started, go on to its end the same way.

The lagging replica is a migrated database of the test's kind with nothing in it (a replica that has caught up with
nothing yet); the up-to-date one is the primary's own URL. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from registry.db import migrate
from registry.evals import export
from registry.runtime import Runtime
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import RUN_ID, AppClient, create_database, drop_database
from tests.embedded import serve_on_engine_kind
from tests.evals.conftest import answers, dataset, publish, start_run
from tests.evals.stand_in import StandIn

ITEMS = [{"variables": {"answer": f"a{n}", "n": n}, "expected": f"a{n}", "tags": [], "metadata": {}} for n in range(5)]


@pytest.fixture
async def lagging_replica(migrated_engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a migrated, empty database of ``migrated_engine``'s kind."""
    if migrated_engine.dialect.name == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'replica.db'}"
    else:
        url = await create_database(f"registry_replica_{RUN_ID}")
    engine = create_async_engine(url, poolclass=NullPool)
    await migrate.upgrade(engine)
    await engine.dispose()
    yield url
    if migrated_engine.dialect.name != "sqlite":
        await drop_database(f"registry_replica_{RUN_ID}")


@contextmanager
def item_reads(engine: AsyncEngine) -> Iterator[list[str]]:
    """The statements reading dataset items that ``engine`` runs meanwhile."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM eval_dataset_items" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def exported(client: AppClient, admin: dict[str, str], name: str, export_format: str = "jsonl") -> bytes:
    response = await client.get(f"/v1/evals/datasets/{name}/versions/1/export?format={export_format}", headers=admin)
    assert response.status_code == 200, response.text
    return response.content


def lines(body: bytes) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in body.splitlines()]


async def test_a_version_just_created_exports_whole_while_the_replica_lags(
    migrated_engine: AsyncEngine,
    settings: Settings,
    tmp_path: Path,
    lagging_replica: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(export, "BATCH", 2)  # several batches, each read from the primary
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, database_read_url=lagging_replica) as (
        client,
        admin,
    ):
        runtime: Runtime = client.app.state.runtime
        await dataset(client, admin, "fresh", ITEMS)
        with item_reads(runtime.read_engine) as from_replica:
            jsonl = await exported(client, admin, "fresh")
            csv = await exported(client, admin, "fresh", "csv")

    assert lines(jsonl) == ITEMS
    assert csv.decode().splitlines()[1:] == [f'"""a{n}""",{n},a{n},[],{{}}' for n in range(5)]  # json.NAME columns
    assert len(from_replica) == 2  # the replica was asked first, once per export, and did not have it


async def test_a_version_the_replica_has_is_exported_from_the_replica(
    migrated_engine: AsyncEngine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "BATCH", 2)
    primary_url = (
        f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        if migrated_engine.dialect.name == "sqlite"
        else settings.database_url
    )
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, database_read_url=primary_url) as (
        client,
        admin,
    ):
        runtime: Runtime = client.app.state.runtime
        assert runtime.read_engine is not runtime.engine
        await dataset(client, admin, "settled", ITEMS)
        with item_reads(runtime.read_engine) as from_replica, item_reads(runtime.engine) as from_primary:
            body = await exported(client, admin, "settled")

    assert lines(body) == ITEMS
    assert (len(from_replica), from_primary) == (3, [])  # batches of 2, 2 and 1, none read again from the primary


async def test_a_runs_events_asked_for_at_once_go_on_to_its_end_while_the_replica_lags(
    migrated_engine: AsyncEngine,
    settings: Settings,
    tmp_path: Path,
    lagging_replica: str,
    stand_in: tuple[StandIn, str],
) -> None:
    fields = {
        "database_read_url": lagging_replica,
        "backends": {"stand-in": backend(stand_in[1], max_retries=0, breaker_cooldown=0.05)},
        "eval_poll_seconds": 0.02,
    }
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, **fields) as (client, admin):
        version = await publish(client, admin, "watched")
        await dataset(client, admin, "watched-cases", answers(("a", "a"), ("b", "c")))
        run = await start_run(client, admin, prompt="watched", version=version, dataset={"name": "watched-cases"})
        response = await client.get(f"/v1/evals/runs/{run['id']}/events", headers=admin)

    assert response.status_code == 200
    events = [
        (block.split("\n")[0].removeprefix("event: "), msgspec.json.decode(block.split("\n")[1].removeprefix("data: ")))
        for block in response.text.strip().split("\n\n")
    ]
    assert [name for name, _ in events][-1] == "done"
    assert (events[-1][1]["status"], events[-1][1]["items_done"]) == ("completed", 2)
