"""A run's progress as server-sent events, read from the database (the worker may be another process).

Read from the read replica, which may lag the primary: a run just started may not be there yet. Then the stream
reads the primary, and keeps to it (a lagging replica read after it could show the run going backwards).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.sse import encode_event
from registry.evals.errors import RunNotFoundError
from registry.evals.schemas import ProgressEvent, RunOut
from registry.evals.service import RunService
from registry.prompts.service import PromptLimits

FINISHED = ("completed", "failed", "cancelled")


async def _read(
    sessionmaker: async_sessionmaker[AsyncSession], limits: PromptLimits, run_id: int
) -> tuple[RunOut, RunOut | None]:
    """The run, and the whole run with its intervals once it has finished; ``RunNotFoundError`` when it is not there.
    The session is closed before anything is sent: a slow reader holds no connection."""
    async with sessionmaker() as session:
        service = RunService(session, limits)
        run = RunOut.of(await service.require(run_id))
        final = (await service.results(run_id)).run if run.status in FINISHED else None
    return run, final


async def run_events(
    replica: async_sessionmaker[AsyncSession],
    primary: async_sessionmaker[AsyncSession],
    limits: PromptLimits,
    run_id: int,
    poll_seconds: float,
) -> AsyncIterator[bytes]:
    """A ``progress`` event whenever the run's counters change (read from the run's row alone, however many
    items it has), then ``done`` with the whole run and its intervals."""
    sessionmaker = replica
    last: ProgressEvent | None = None
    while True:
        try:
            run, final = await _read(sessionmaker, limits, run_id)
        except RunNotFoundError:
            if sessionmaker is primary:
                raise
            sessionmaker = primary
            run, final = await _read(primary, limits, run_id)
        progress = ProgressEvent.of(run)
        if progress != last:
            yield encode_event("progress", progress)
            last = progress
        if final is not None:
            yield encode_event("done", final)
            return
        await asyncio.sleep(poll_seconds)
