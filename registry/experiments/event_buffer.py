"""Outcome events accepted while the database is unreachable, written when it returns.

``POST /v1/events`` writes synchronously. When the database cannot be reached,
the events that pass the checks needing no database (shape, timestamp window,
a finite value) are held here and the request is answered 202, each such item
``buffered``, so apps keep reporting outcomes through a short outage.

Semantics:
- Bounded: at most ``experiment_event_buffer_size`` events are held. A batch
  that does not fit is refused whole with 503 ``database_unavailable`` (the
  client sends it again later) and counted in
  ``registry_experiment_events_dropped_total``; nothing acknowledged is dropped.
- Written every ``experiment_event_retry_seconds`` once the database answers,
  through the same checks and the same ``ON CONFLICT (idempotency_key)``
  insert as the normal path, so a batch sent again is still deduplicated.
  Events that fail the database checks then (an unknown metric or experiment)
  are discarded and counted in ``registry_experiment_buffered_events_rejected_total``.
- Held in this process only: a graceful stop tries one last write; a hard kill,
  or a stop while the database is still down, loses what is held.
- Erasure: held events of a unit erased since are not written (``EventService.store``); once a write committed,
  its units are checked against the durable record of erasures and the facts of those erased meanwhile are erased
  again, as the exposure buffer's (``registry.experiments.exposures.erase_written_again``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db.batches import write_isolating
from registry.experiments.exposures import erase_written_again
from registry.experiments.privacy_digest import RecentErasures
from registry.experiments.schemas import EventIn
from registry.lib.errors import DatabaseUnavailableError

logger = structlog.get_logger("registry.experiments.event_buffer")


@dataclass(frozen=True, slots=True)
class HeldBatch:
    """The events of one request, with the time they were received (their ``received_at``)."""

    received_at: datetime
    events: list[EventIn]


HeldEventWriter = Callable[[AsyncSession, list[HeldBatch]], Awaitable[int]]
"""Writes held batches in the given transaction; returns how many events it rejected."""


class EventBuffer:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: HeldEventWriter,
        *,
        max_pending: int,
        erasures: RecentErasures | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._writer = writer
        self._erasures = RecentErasures() if erasures is None else erasures
        self._max_pending = max_pending
        self._held: list[HeldBatch] = []
        self._pending = 0
        self._lock = asyncio.Lock()
        self._buffered = Counter(
            "registry_experiment_events_buffered_total",
            "Outcome events held in memory because the database was unreachable.",
            registry=metrics_registry,
        )
        self._dropped = Counter(
            "registry_experiment_events_dropped_total",
            "Outcome events refused with 503 because the database was unreachable and the buffer was full.",
            registry=metrics_registry,
        )
        self._refused = Counter(
            "registry_experiment_buffered_events_refused_total",
            "Buffered outcome events dropped because the database refused them (their data, not its state).",
            registry=metrics_registry,
        )
        self._rejected = Counter(
            "registry_experiment_buffered_events_rejected_total",
            "Buffered outcome events discarded when written (unknown metric or experiment).",
            registry=metrics_registry,
        )

    @property
    def pending(self) -> int:
        return self._pending

    def hold(self, events: list[EventIn], received_at: datetime) -> None:
        """Keep a request's events for a later write, all or none: a batch that does not fit is refused."""
        if not events:
            return
        if self._pending + len(events) > self._max_pending:
            self._dropped.inc(len(events))
            raise DatabaseUnavailableError(
                "the database is unreachable and the event buffer is full; retry shortly",
                headers={"Retry-After": "1"},
            )
        self._held.append(HeldBatch(received_at, events))
        self._pending += len(events)
        self._buffered.inc(len(events))

    async def flush(self) -> int:
        """Write held events in one transaction; on failure they are kept for the next try. Returns events written.

        Events the database refuses for their data (``registry.db.batches``) are dropped, logged and counted in
        ``registry_experiment_buffered_events_refused_total``: kept, they would hold back every later event.

        First, the facts of units that writes of this process (requests' events included) committed after their
        erasure are erased again."""
        async with self._lock:
            await erase_written_again(self._sessionmaker, self._erasures)
            if not self._held:
                return 0
            batches, self._held = self._held, []
            count, self._pending = self._pending, 0
            rejections: list[int] = []

            async def write(part: list[HeldBatch]) -> None:
                async with self._sessionmaker() as session, session.begin():
                    rejected_here = await self._writer(session, part)
                rejections.append(rejected_here)  # once committed

            try:
                outcome = await write_isolating(batches, write)
                if outcome.error is not None:  # those of several events are tried apart next time
                    outcome.unwritten += [batch for batch, _ in outcome.refused if len(batch.events) > 1]
                    outcome.refused = [(batch, exc) for batch, exc in outcome.refused if len(batch.events) == 1]
                elif any(len(batch.events) > 1 for batch, _ in outcome.refused):  # find the events it refused
                    singles = [
                        HeldBatch(batch.received_at, [event]) for batch, _ in outcome.refused for event in batch.events
                    ]
                    alone = await write_isolating(singles, write)
                    outcome.written += alone.written
                    outcome.refused = alone.refused
                    outcome.unwritten += alone.unwritten
                    outcome.error = outcome.error or alone.error
            except BaseException:  # cancelled mid-write: nothing is known to be written
                self._held = batches + self._held
                self._pending += count
                raise
            rejected = sum(rejections)
            if outcome.refused:
                refused = [event for batch, _ in outcome.refused for event in batch.events]
                count -= len(refused)
                self._refused.inc(len(refused))
                logger.error(
                    "buffered outcome events refused by the database; dropped",
                    idempotency_keys=[event.idempotency_key for event in refused[:20]],
                    dropped=len(refused),
                    error=str(outcome.refused[0][1]),
                )
            if outcome.error is not None:
                unwritten = sum(len(batch.events) for batch in outcome.unwritten)
                self._held = outcome.unwritten + self._held
                self._pending += unwritten
                count -= unwritten
                if not outcome.written:
                    raise outcome.error
                logger.warning("could not write some buffered outcome events; will retry", error=str(outcome.error))
            # The writer queued the units it wrote, once committed, to be checked against the erasures
            # (``EventService.store``): checked now, as an exposure batch is.
            await erase_written_again(self._sessionmaker, self._erasures)
            self._rejected.inc(rejected)
            logger.info("buffered outcome events written", events=count, rejected=rejected)
            return count - rejected
