"""First exposures, deduplicated in memory and written in batches, off the render path.

Rendering a prompt in an experiment must not cost a database round trip, so
the router only records ``(experiment, phase, unit, variant)`` here. Repeats of
a pending or recently written exposure are dropped in memory; the rest are
written by a periodic job with ``INSERT ... ON CONFLICT DO NOTHING`` (another
replica may have written the same unit), and the units of those inserted are
queued for the aggregator.

Durability: pending exposures are written every
``experiment_exposure_flush_seconds``, when the buffer is half full, and once
more on a graceful shutdown (``Runtime.stop`` runs every job a last time), so
a graceful stop or restart loses nothing. A hard kill (SIGKILL, power loss)
loses the exposures first seen since the last flush: at most one flush
interval's worth, and never more than ``experiment_exposure_buffer_size``.
A unit whose exposure was lost is recorded again, with the later time, the
next time it is routed. When the buffer is full (the database unreachable for
long), new exposures are dropped and counted in
``registry_experiment_exposures_dropped_total``.

Erasure (``registry.experiments.privacy``): once a unit's erasure commits, its digest is remembered for
``ERASURE_IN_FLIGHT_SECONDS`` (``RecentErasures``, shared with the outcome events), and its exposures first seen
before then are dropped when a batch is taken, so a request that routed the unit before the erasure and buffers
its exposure after writes nothing. ``record`` pays nothing for it: units are hashed off the request path.

News of an erasure reaches the other replicas later (pub/sub), so a batch may be written after an erasure this
replica has not heard of yet. Each batch, once committed, is checked against the durable record of erasures (their
audit entries, by the digests of its units; ``erase_written_again``): the facts of a unit erased within the window
are erased again and the aggregator takes its share out. Why after the commit, under a lock: on PostgreSQL (READ
COMMITTED) the erasure's delete does not see rows not yet committed, and a check inside the write could run before
the erasure commits and miss it; the check shares ``ERASURE_LOCK``, which an erasure holds alone from before its
delete until it ends, so an erasure whose delete began before the batch committed has committed (or rolled back)
when the check reads, and a later erasure's delete sees the batch. SQLite runs one writing transaction at a time
(``BEGIN IMMEDIATE``), so an erasure either committed before the batch began or deletes it. The batch's rows are
visible from their commit until the check, in the same flush; a check that fails is retried by the next flush.
It costs each flush one more transaction: the batch's distinct units hashed, and looked up by digest (an index
lookup each, in one statement on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db.batches import write_isolating
from registry.experiments.privacy_digest import RecentErasures, unit_digest
from registry.experiments.repository import ExposureRow, IngestRepository, UnitDataRepository
from registry.lib.logging import error_text

EARLY_FLUSH_STOP_SECONDS = 10.0  # how long stop lets an early flush under way finish
logger = structlog.get_logger("registry.experiments.exposures")

ExposureKey = tuple[int, int, str, str]  # experiment id, phase, unit, variant key


class ExposureBuffer:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        max_pending: int,
        erasures: RecentErasures | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._max_pending = max_pending
        self._pending: dict[ExposureKey, float] = {}  # first seen, as a Unix time
        # Recently written keys in two generations: when the newer reaches a buffer's worth it becomes the
        # older and the older is forgotten, so at least a buffer's worth (and under three) are remembered,
        # updated at C speed (an LRU updated key by key cost a flush of a second's exposures 2 ms).
        self._written: set[ExposureKey] = set()
        self._written_before: set[ExposureKey] = set()
        self._lock = asyncio.Lock()
        self._erased = RecentErasures() if erasures is None else erasures
        self._early_flush: asyncio.Task[Any] | None = None
        self.dropped = 0
        self._recorded_since_flush = 0
        self._recorded = Counter(
            "registry_experiment_exposures_total", "First exposures buffered for writing.", registry=metrics_registry
        )
        self._dropped = Counter(
            "registry_experiment_exposures_dropped_total",
            "First exposures dropped because the buffer was full.",
            registry=metrics_registry,
        )
        self.refused = 0
        self._refused = Counter(
            "registry_experiment_exposures_refused_total",
            "First exposures dropped because the database refused them (their data, not its state).",
            registry=metrics_registry,
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def record(self, experiment_id: int, phase: int, unit: str, variant: str) -> None:
        """Remember a first exposure (cheap, synchronous: called while routing a render)."""
        key = (experiment_id, phase, unit, variant)
        if key in self._pending or key in self._written or key in self._written_before:
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            self._dropped.inc()
            return
        self._pending[key] = time.time()  # a float: cheaper than a datetime on the render path
        self._recorded_since_flush += 1
        if len(self._pending) >= self._max_pending // 2:
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._early_flush is not None and not self._early_flush.done():
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the periodic flush will do
            self._early_flush = asyncio.get_running_loop().create_task(self._flush_logged())

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception as exc:
            logger.warning("early exposure flush failed; the periodic flush retries", error=error_text(exc))

    async def flush(self) -> int:
        """Write pending exposures; on failure they are kept (within the bound) for the next flush. Then check the
        units written against the erasures committed meanwhile (``erase_written_again``).

        A batch the database refuses for its data is written in parts (``registry.db.batches``): the exposures it
        refuses alone are dropped, logged and counted (``registry_experiment_exposures_refused_total``), so one
        cannot hold back every later exposure."""
        async with self._lock:
            if self._erased.written_after or self._erased.to_check:  # left by a check that failed, or by events
                await erase_written_again(self._sessionmaker, self._erased)
            if self._erased:
                self._drop_erased()
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            self._recorded.inc(self._recorded_since_flush)
            self._recorded_since_flush = 0
            rows = [(e, p, u, v, at) for (e, p, u, v), at in batch.items()]
            try:
                outcome = await write_isolating(rows, self._write)
            except BaseException:  # cancelled mid-write: nothing is known to be written
                self._restore(batch)  # the next flush drops those of units erased meanwhile
                raise
            if outcome.refused:
                self._refuse([row for row, _ in outcome.refused], outcome.refused[0][1])
            if outcome.error is not None:
                self._restore({row[:4]: row[4] for row in outcome.unwritten})
                if not outcome.written:
                    raise outcome.error
                logger.warning("could not write some exposures; will retry", error=str(outcome.error))
            if len(outcome.written) < len(rows):
                written_keys = {row[:4] for row in outcome.written}
                batch = {key: at for key, at in batch.items() if key in written_keys}
            rows = outcome.written
            first_seen: dict[str, float] = {}
            for (_, _, unit, _), at in batch.items():
                first_seen[unit] = min(first_seen.get(unit, at), at)
            self._erased.check_later(first_seen)
            await erase_written_again(self._sessionmaker, self._erased)
            if self._erased:  # an erased unit's exposures are not remembered as written
                digests: dict[str, str] = {}
                batch = {
                    key: at for key, at in batch.items() if not self._erased.covers(self._digest(key, digests), at)
                }
            self._written.update(batch)
            if len(self._written) >= self._max_pending:
                self._written_before, self._written = self._written, set()
            return len(rows)

    async def _write(self, rows: list[ExposureRow]) -> None:
        async with self._sessionmaker() as session, session.begin():
            await IngestRepository(session).insert_exposures_and_queue_units(rows)

    def _refuse(self, rows: list[ExposureRow], error: BaseException) -> None:
        """Drop exposures the database refused for their data: kept, they would fail every later batch.

        The log names each unit by its digest (``unit_digest``): a log line outlives the unit's erasure."""
        self.refused += len(rows)
        self._refused.inc(len(rows))
        logger.error(
            "exposures refused by the database; dropped",
            exposures=[
                {"experiment_id": e, "phase": p, "unit_digest": unit_digest(u), "variant": v}
                for e, p, u, v, _ in rows[:20]
            ],
            dropped=len(rows),
            error=error_text(error),
        )

    def _drop_erased(self) -> None:
        """Drop the pending exposures of units erased after they were first seen, or before: those of requests in
        flight during the erasure. Then forget the erasures no such request can follow any more."""
        digests: dict[str, str] = {}
        for key in [key for key, at in self._pending.items() if self._erased.covers(self._digest(key, digests), at)]:
            del self._pending[key]
        self._erased.prune()

    @staticmethod
    def _digest(key: ExposureKey, digests: dict[str, str]) -> str:
        unit = key[2]
        return digests.get(unit) or digests.setdefault(unit, unit_digest(unit))

    def _restore(self, batch: dict[ExposureKey, float]) -> None:
        for key, at in batch.items():
            if key in self._pending:
                self._pending[key] = min(self._pending[key], at)
            elif len(self._pending) < self._max_pending:
                self._pending[key] = at
            else:
                self.dropped += 1
                self._dropped.inc()

    def forget_unit(self, digest: str) -> int:
        """The erasure of the unit of ``unit_digest`` ``digest`` committed (its change, heard here): drop its
        buffered exposures, and those buffered in the next ``ERASURE_IN_FLIGHT_SECONDS`` (requests in flight during
        the erasure); returns how many were pending. This process's outcome events share the memory of the erasure
        (``RecentErasures``)."""
        self._erased.remember(digest)
        digests: dict[str, str] = {}

        def of_unit(key: ExposureKey) -> bool:
            return self._digest(key, digests) == digest

        pending = [key for key in self._pending if of_unit(key)]
        for key in pending:
            del self._pending[key]
        for written in (self._written, self._written_before):
            written.difference_update([key for key in written if of_unit(key)])
        return len(pending)

    async def erase_unit(self, unit: str) -> None:
        """This process is about to erase ``unit``: wait until no batch is being written (the flush's lock), so
        that the erasure's delete, which follows, finds and counts every exposure of it written before.

        Nothing is dropped or remembered here: the erasure may still fail and roll back. Once it commits, its
        change reaches this process's handlers (``forget_unit``) before the erasure is answered."""
        async with self.writes_held():
            return

    @contextlib.asynccontextmanager
    async def writes_held(self) -> AsyncIterator[None]:
        """No batch is written while this is held: what is pending and what the database holds are read as one
        (a flush between the two reads would show an exposure in both, or, under way, in neither)."""
        async with self._lock:
            yield

    def pending_for_unit(self, unit: str) -> int:
        """The unit's pending exposures the next flush writes (not those of requests in flight at its erasure)."""
        erased_until = self._erased.until(unit_digest(unit))
        return sum(1 for key, at in self._pending.items() if key[2] == unit and at >= erased_until)

    async def stop(self) -> None:
        # An early flush under way is let finish, not cancelled: on SQLite a write cancelled mid-statement
        # keeps the database's lock while anything references it, and the final flush would then fail.
        # Bounded, as the runtime's jobs are (``registry.runtime``): a flush that overruns is cancelled as before.
        early, self._early_flush = self._early_flush, None
        if early is not None:
            finished, _ = await asyncio.wait({early}, timeout=EARLY_FLUSH_STOP_SECONDS)
            if not finished:
                early.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await early


async def erase_written_again(sessionmaker: async_sessionmaker[AsyncSession], erasures: RecentErasures) -> None:
    """Writes committed after the erasure of some of their units: erase those units' facts again, and queue them
    so the aggregator takes their share out. On failure they are kept for the next flush.

    Those units are the ones queued in ``written_after`` (found erased by a check whose erasing failed) and those
    of ``to_check`` (units of committed writes) that the durable record shows erased within the window before they
    were first seen, or since; the latter are learned (``RecentErasures.learn``), so this replica drops the unit's
    data from then on even if the news never comes. The lookup shares ``ERASURE_LOCK`` (see the module's docstring
    for why that is enough on PostgreSQL and SQLite).
    """
    units, erasures.written_after = erasures.written_after, set()
    written, erasures.to_check = erasures.to_check, {}
    if not units and not written:
        return
    try:
        async with sessionmaker() as session, session.begin():
            facts = UnitDataRepository(session)
            if written:
                units = units | await erased_among(facts, erasures, written)
            for unit in sorted(units):
                await facts.delete_facts(unit)
            await IngestRepository(session).mark_units_changed(units)
    except Exception as exc:
        erasures.written_after |= units
        erasures.check_later(written)
        logger.error(
            "could not check or erase again the facts of units erased during a write; retrying", error=error_text(exc)
        )


async def erased_among(facts: UnitDataRepository, erasures: RecentErasures, written: dict[str, float]) -> set[str]:
    """The units of ``written`` (unit -> first seen, Unix time) whose committed erasure covers them, by the durable
    record (learned into ``erasures``) or by the news heard here. Waits for an erasure under way (``ERASURE_LOCK``)."""
    digests = {unit: unit_digest(unit) for unit in written}
    found = await facts.erasures_covering(set(digests.values()), min(written.values()))
    erasures.learn({digest: at.timestamp() for digest, at in found.items()})
    return {unit for unit, at in written.items() if erasures.covers(digests[unit], at)}
