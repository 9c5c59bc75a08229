"""A key's budget and spend are read once per expiry, however many of its requests miss them at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.models import ApiKey
from registry.completions.budgets import _BUDGET_SECONDS, _SPEND_SECONDS, BudgetGuard
from registry.completions.models import ApiKeyBudget
from registry.completions.repository import CompletionRepository
from registry.completions.usage import UsageRecorder
from registry.db import migrate
from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.changes import ChangeBus
from registry.settings import Settings
from tests.auth.test_key_verification_outage import FakeClock

CONCURRENT = 16


class Statements:
    """The statements an engine ran, as SQL text (the SQLite engine's ``BEGIN IMMEDIATE`` included)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.seen: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.seen.append(statement)

    def count(self, fragment: str) -> int:
        return sum(fragment in statement for statement in self.seen)


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, clean_database: AsyncEngine
) -> AsyncIterator[AsyncEngine]:
    """The registry's own engine (so SQLite's transactions begin as the server's do), on a migrated database."""
    url = database_url
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    engine = create_engine(Settings(database_url=url))
    if request.param == "sqlite":
        await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


async def budgeted_key(engine: AsyncEngine, monthly_tokens: int) -> str:
    public_id = uuid.uuid4().hex[:12]
    async with create_sessionmaker(engine)() as session, session.begin():
        key = ApiKey(public_id=public_id, name="app", secret_hash="x", scopes=["read"], created_by="test")
        session.add(key)
        await session.flush()
        session.add(ApiKeyBudget(api_key_id=key.id, monthly_tokens=monthly_tokens, updated_by="test"))
    return public_id


def guard_of(engine: AsyncEngine, clock: FakeClock) -> BudgetGuard:
    sessionmaker = create_sessionmaker(engine)
    return BudgetGuard(sessionmaker, ChangeBus(None, "changes"), UsageRecorder(sessionmaker), clock=clock)


async def test_concurrent_checks_after_the_budget_expired_read_it_once(engine: AsyncEngine) -> None:
    key = await budgeted_key(engine, monthly_tokens=1000)
    clock = FakeClock()
    guard = guard_of(engine, clock)
    await guard.check(key)  # warm
    statements = Statements(engine)

    clock.now += max(_BUDGET_SECONDS, _SPEND_SECONDS) + 1
    await asyncio.gather(*(guard.check(key) for _ in range(CONCURRENT)))

    assert statements.count("api_key_budgets") == 1
    assert statements.count("FROM completions") == 1
    if engine.dialect.name == "sqlite":  # one read-only transaction per read (budget, then spend), no write lock
        assert statements.seen.count("BEGIN") == 2
        assert statements.count("BEGIN IMMEDIATE") == 0


async def test_a_failed_budget_read_fails_every_waiting_check_once_and_the_next_check_reads_again(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await budgeted_key(engine, monthly_tokens=1000)
    guard = guard_of(engine, FakeClock())
    reads = 0
    failure = OperationalError("SELECT", {}, ConnectionRefusedError("database unreachable"))
    real_budget_of = CompletionRepository.budget_of

    async def failing_budget_of(self: CompletionRepository, public_id: str) -> ApiKeyBudget | None:
        nonlocal reads
        reads += 1
        if reads == 1:
            await asyncio.sleep(0)  # the other checks arrive while this read is in flight
            raise failure
        return await real_budget_of(self, public_id)

    monkeypatch.setattr(CompletionRepository, "budget_of", failing_budget_of)

    outcomes = await asyncio.gather(*(guard.check(key) for _ in range(CONCURRENT)), return_exceptions=True)

    assert reads == 1
    assert all(outcome is failure for outcome in outcomes)
    await guard.check(key)
    assert reads == 2


async def test_a_check_cancelled_while_reading_leaves_the_read_to_the_waiting_checks(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await budgeted_key(engine, monthly_tokens=1000)
    guard = guard_of(engine, FakeClock())
    reads = 0
    first_read_started = asyncio.Event()
    real_budget_of = CompletionRepository.budget_of

    async def budget_of(self: CompletionRepository, public_id: str) -> ApiKeyBudget | None:
        nonlocal reads
        reads += 1
        if reads == 1:
            first_read_started.set()
            await asyncio.Event().wait()  # until cancelled
        return await real_budget_of(self, public_id)

    monkeypatch.setattr(CompletionRepository, "budget_of", budget_of)

    first = asyncio.create_task(guard.check(key))
    await first_read_started.wait()
    waiting = [asyncio.create_task(guard.check(key)) for _ in range(CONCURRENT - 1)]
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(*waiting)

    assert first.cancelled()
    assert reads == 2  # the cancelled read, then one for all who waited


async def test_on_sqlite_only_the_budget_reads_begin_deferred_and_a_write_still_takes_the_write_lock(
    engine: AsyncEngine,
) -> None:
    statements = Statements(engine)
    key = await budgeted_key(engine, monthly_tokens=1000)
    written = list(statements.seen)
    await guard_of(engine, FakeClock()).check(key)
    read = statements.seen[len(written) :]

    if engine.dialect.name == "sqlite":
        assert (written.count("BEGIN IMMEDIATE"), written.count("BEGIN")) == (1, 0)
        assert (read.count("BEGIN IMMEDIATE"), read.count("BEGIN")) == (0, 2)
    else:
        assert "BEGIN" not in written + read  # asyncpg begins its transactions itself
