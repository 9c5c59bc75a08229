"""A stop that finds a background job in the middle of a statement still writes what was buffered (``Runtime.stop``).

On SQLite a job cancelled while its statement runs in aiosqlite's thread leaves the database's write lock held by
its closed connection, and every later transaction of the process then waits out the busy timeout and fails
("database is locked"): the final usage flush lost its records. The job here is held inside its statement by a
SQL function that waits on an event, released when the stop begins (no timing).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import threading
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import structlog
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

import registry.auth.verifier
import registry.completions.usage
import registry.experiments.exposures
import registry.runtime
from registry.db import migrate
from registry.db.engine import create_engine
from registry.lib.jobs import PeriodicJob
from registry.runtime import Runtime
from registry.settings import BackendSettings, Settings
from tests.completions.conftest import serve_in_thread
from tests.completions.fault_server import FaultServer
from tests.embedded import embedded_settings

WAIT = 60.0  # bounds a wait that fails the test rather than hang it; never reached when it passes


class HeldJob:
    """A job whose first run holds a write transaction until ``release`` is set; ``inside`` is set once it is held.

    ``in_statement`` (SQLite): held inside a statement, by a SQL function run in aiosqlite's thread; otherwise held
    between two statements of the transaction (the same on both databases).
    """

    def __init__(self, runtime: Runtime, *, in_statement: bool) -> None:
        self.runtime = runtime
        self.in_statement = in_statement
        self.inside = asyncio.Event()
        self.release = threading.Event()
        self.runs_ended = 0

    async def run(self) -> None:
        if self.runs_ended or self.inside.is_set():
            return
        loop = asyncio.get_running_loop()

        def hold() -> int:
            loop.call_soon_threadsafe(self.inside.set)
            return int(self.release.wait(WAIT))

        async with self.runtime.sessionmaker() as session, session.begin():
            if self.in_statement:
                connection = await session.connection()
                raw = await connection.get_raw_connection()
                await raw.driver_connection.create_function("hold", 0, hold)  # type: ignore[union-attr]
                await session.execute(text("SELECT hold()"))
            else:
                await session.execute(text("SELECT 1"))
                await asyncio.to_thread(hold)
        self.runs_ended += 1


@pytest.fixture
async def sqlite_settings(tmp_path: Path) -> Settings:
    # The periodic usage flush sleeps through the test: only the final flush writes the record.
    settings = embedded_settings(tmp_path, completion_usage_flush_seconds=3600.0)
    engine = create_engine(settings)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return settings


def release_as_the_stop_begins(runtime: Runtime, held: HeldJob) -> None:
    """Ending open change feeds is the stop's first step, before it decides what to do with running jobs."""
    close_feeds = runtime.feed.close

    def release_then_close() -> None:
        held.release.set()
        close_feeds()

    runtime.feed.close = release_then_close  # type: ignore[method-assign]


def release_when_cancelled(runtime: Runtime, held: HeldJob) -> None:
    """A statement's task cancelled in it invalidates its connection, which then waits for the statement to end."""
    event.listen(runtime.engine.sync_engine.pool, "invalidate", lambda *_: held.release.set())


def fail_at_once_when_locked(dbapi_connection: Any, _record: object) -> None:
    """After the engine's own setup: a transaction that finds the write lock held fails now, not after 15 s,
    so a lock left held shows at once (and one waited out still shows)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.close()


async def stop_while_held(runtime: Runtime, held: HeldJob, prompt: str = "greet") -> list[dict[str, object]]:
    """Start ``runtime`` with the held job, buffer a usage record while the job is held, stop."""
    if runtime.settings.is_sqlite:
        event.listen(runtime.engine.sync_engine, "connect", fail_at_once_when_locked)
    runtime.jobs.append(PeriodicJob("held", 0.0, held.run, run_at_shutdown=False))
    await runtime.start()
    await asyncio.wait_for(held.inside.wait(), WAIT)
    runtime.completions.recorder.add({"prompt": prompt, "status": "ok", "output_tokens": 2, "cost": 0.5})
    with captured_logs() as logs:
        await runtime.stop()
    return logs


# The modules whose logs the tests read: the runtime's own, and the final flushes'.
LOGGING_MODULES = (registry.runtime, registry.completions.usage, registry.auth.verifier, registry.experiments.exposures)


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, object]]]:
    """structlog's ``capture_logs``, with fresh loggers for ``LOGGING_MODULES``.

    A module's logger is cached with the processors of its first use; once the app's logging has been
    configured again since (another test's app), ``capture_logs`` no longer reaches it, and a check that
    nothing failed would pass whatever happened.
    """
    with capture_logs() as logs, contextlib.ExitStack() as stack:
        for module in LOGGING_MODULES:
            stack.enter_context(patch.object(module, "logger", structlog.get_logger(module.__name__)))
        yield logs


async def prompts_recorded(settings: Settings) -> list[str]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(text("SELECT prompt FROM completions"))).scalars())
    finally:
        await engine.dispose()


def failures(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    """Final flushes that failed (their error is in ``exc_info``) and writes that found the database locked."""
    return [entry for entry in logs if entry["event"] == "final flush failed" or "database is locked" in str(entry)]


async def test_a_job_inside_a_statement_at_stop_ends_its_run_and_the_final_flush_writes(
    sqlite_settings: Settings,
) -> None:
    runtime = Runtime.build(sqlite_settings)
    held = HeldJob(runtime, in_statement=True)
    release_as_the_stop_begins(runtime, held)

    logs = await stop_while_held(runtime, held)

    assert await prompts_recorded(sqlite_settings) == ["greet"]
    assert failures(logs) == []
    assert held.runs_ended == 1


async def test_a_job_cancelled_inside_a_statement_past_the_wait_leaves_the_final_flush_working(
    sqlite_settings: Settings,
) -> None:
    runtime = Runtime.build(sqlite_settings)
    runtime.job_stop_wait_seconds = 0.0  # no wait for running jobs: the held one is cancelled in its statement
    held = HeldJob(runtime, in_statement=True)
    release_when_cancelled(runtime, held)

    logs = await stop_while_held(runtime, held)

    assert await prompts_recorded(sqlite_settings) == ["greet"]
    assert failures(logs) == []
    assert held.runs_ended == 0
    assert [entry["job"] for entry in logs if entry["event"] == "background job still running at stop; cancelled"] == [
        "held"
    ]


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_settings(
    request: pytest.FixtureRequest, settings: Settings, clean_database: AsyncEngine, sqlite_settings: Settings
) -> Settings:
    if request.param == "sqlite":
        return sqlite_settings
    return settings.model_copy(update={"completion_usage_flush_seconds": 3600.0})


async def test_a_job_in_a_transaction_at_stop_ends_its_run_before_the_final_flush(any_settings: Settings) -> None:
    runtime = Runtime.build(any_settings)
    held = HeldJob(runtime, in_statement=False)
    release_as_the_stop_begins(runtime, held)
    prompt = f"greet-{uuid.uuid4().hex[:8]}"

    logs = await stop_while_held(runtime, held, prompt)

    assert (await prompts_recorded(any_settings)).count(prompt) == 1
    assert failures(logs) == []
    assert held.runs_ended == 1


class HeldCount(FaultServer):
    """The fault server, its ``/tokenize`` answering only once ``release`` is set; ``asked`` once it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.release = threading.Event()

    async def _tokenize(self, send: Any, payload: dict[str, Any]) -> None:
        self.asked.set()
        await asyncio.to_thread(self.release.wait, WAIT)
        await super()._tokenize(send, payload)


async def test_a_left_completion_whose_prompt_is_counted_during_the_stop_is_written_by_the_final_flush(
    tmp_path: Path,
) -> None:
    """A completion left during its prefill is recorded once the backend has counted its prompt
    (``registry.completions.prefill``). A stop while that count is under way waits for it before the final flush.
    The count is held until the stop waits for it, or until the usage's final flush begins (which, without that
    wait, it does with the record still to come)."""
    counter = HeldCount()
    with serve_in_thread(counter, lifespan="off") as url:
        settings = embedded_settings(
            tmp_path, completion_usage_flush_seconds=3600.0, backends={"held": BackendSettings(url=url)}
        )
        engine = create_engine(settings)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()
        runtime = Runtime.build(settings)
        prefill = runtime.completions.prefill
        assert prefill is not None
        settled = prefill.settled

        async def release_then_settle() -> None:
            counter.release.set()
            await settled()

        prefill.settled = release_then_settle  # type: ignore[method-assign]
        [usage] = [job for job in runtime.jobs if job.name == "completion-usage"]

        async def release_then_flush() -> object:
            counter.release.set()
            return await usage.run()

        runtime.jobs[runtime.jobs.index(usage)] = dataclasses.replace(usage, run=release_then_flush)
        await runtime.start()
        prompt = f"left-{uuid.uuid4().hex[:8]}"
        payload = {"model": "m", "messages": [{"role": "user", "content": "one two three"}]}

        def record(counts: list[int]) -> None:
            runtime.completions.recorder.add({"prompt": prompt, "status": "cancelled", "input_tokens": counts[0]})

        prefill.count_each_then([(runtime.completions.upstream.backend("held"), payload)], record)
        assert await asyncio.to_thread(counter.asked.wait, WAIT)
        with captured_logs() as logs:
            await runtime.stop()

    assert await input_tokens_recorded(settings, prompt) == [6]  # three words, plus 3 for a chat
    assert failures(logs) == []


async def input_tokens_recorded(settings: Settings, prompt: str) -> list[int]:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            query = text("SELECT input_tokens FROM completions WHERE prompt = :prompt")
            return list((await connection.execute(query, {"prompt": prompt})).scalars())
    finally:
        await engine.dispose()


async def test_runtimes_started_one_after_another_are_collected(tmp_path: Path) -> None:
    """``start`` freezes what is alive for the collector's sake (``gc.freeze``), once per process: frozen at each
    start, every app and runtime a process had started was kept, about 3 MB a test."""
    settings = embedded_settings(tmp_path)
    engine = create_engine(settings)
    await migrate.upgrade(engine)
    await engine.dispose()
    collected = []
    for _ in range(2):  # the first may be the process's first start, whose runtime is frozen for good
        runtime = Runtime.build(settings)
        await runtime.start()
        await runtime.stop()
        stopped = weakref.ref(runtime)
        del runtime
        gc.collect()
        collected.append(stopped() is None)

    assert collected[-1]
