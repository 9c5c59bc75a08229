"""A run's progress as server-sent events, read from the database (the worker may be another process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.sse import encode_event
from registry.evals.schemas import ProgressEvent, RunOut
from registry.evals.service import RunService
from registry.prompts.service import PromptLimits

FINISHED = ("completed", "failed", "cancelled")


async def run_events(
    sessionmaker: async_sessionmaker[AsyncSession], limits: PromptLimits, run_id: int, poll_seconds: float
) -> AsyncIterator[bytes]:
    """A ``progress`` event whenever the run's counters change (read from the run's row alone, however many
    items it has), then ``done`` with the whole run and its intervals."""
    last: ProgressEvent | None = None
    while True:
        async with sessionmaker() as session:  # closed before anything is sent: a slow reader holds no connection
            service = RunService(session, limits)
            run = RunOut.of(await service.require(run_id))
            final = (await service.results(run_id)).run if run.status in FINISHED else None
        progress = ProgressEvent.of(run)
        if progress != last:
            yield encode_event("progress", progress)
            last = progress
        if final is not None:
            yield encode_event("done", final)
            return
        await asyncio.sleep(poll_seconds)
