"""A run's progress as server-sent events, read from the database (the worker may be another process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.sse import encode_event
from registry.evals.schemas import ProgressEvent
from registry.evals.service import RunService
from registry.prompts.service import PromptLimits

FINISHED = ("completed", "failed", "cancelled")


async def run_events(
    sessionmaker: async_sessionmaker[AsyncSession], limits: PromptLimits, run_id: int, poll_seconds: float
) -> AsyncIterator[bytes]:
    """A ``progress`` event whenever the run's counters change, then ``done`` with the whole run."""
    last: ProgressEvent | None = None
    while True:
        async with sessionmaker() as session:
            results = await RunService(session, limits).results(run_id)
        progress = ProgressEvent.of(results.run)
        if progress != last:
            yield encode_event("progress", progress)
            last = progress
        if results.run.status in FINISHED:
            yield encode_event("done", results.run)
            return
        await asyncio.sleep(poll_seconds)
