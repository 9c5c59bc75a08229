"""Outcome events and app-reported exposures coming in."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
import sqlalchemy
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.experiments.event_buffer import EventBuffer, HeldBatch
from registry.experiments.exposures import ExposureBuffer
from registry.experiments.privacy_digest import RecentErasures, unit_digest
from registry.experiments.repository import ExperimentRepository, IngestRepository, MetricRepository
from registry.experiments.router import ExperimentRouter
from registry.experiments.schemas import (
    EventBatch,
    EventBatchOut,
    EventIn,
    EventResultOut,
    ExposureBatch,
    ExposureBatchOut,
    ItemErrorOut,
)
from registry.lib.errors import (
    DatabaseUnavailableError,
    FieldError,
    InvalidInputError,
    field_error,
    translate_exception,
)
from registry.settings import Settings


@dataclass(frozen=True, slots=True)
class EventLimits:
    max_age: timedelta
    max_future: timedelta

    @classmethod
    def of(cls, settings: Settings) -> EventLimits:
        return cls(
            max_age=timedelta(days=settings.event_max_age_days),
            max_future=timedelta(seconds=settings.event_max_future_seconds),
        )


# The most a batch's ``sent_at`` may differ from the service's clock. A clock a few minutes or hours off (a time
# zone taken for UTC) is corrected; one further off is broken, and events moved by it would be guesses.
MAX_CLOCK_CORRECTION = timedelta(days=1)


def clock_correction(sent_at: datetime | None, received_at: datetime) -> timedelta:
    """What to add to the timestamps of a batch sent at ``sent_at`` by the sender's clock, received at
    ``received_at`` by the service's: the difference of the two clocks (plus the batch's short time in transit).

    Events are stamped with the sender's clock, so one running minutes behind would file its outcomes before the
    exposures the service stamped, in the wrong analysis window. Without ``sent_at`` (older clients) nothing moves.
    """
    if sent_at is None:
        return timedelta(0)
    correction = received_at - sent_at
    if abs(correction) > MAX_CLOCK_CORRECTION:
        ahead_or_behind = "behind" if correction > timedelta(0) else "ahead of"
        raise InvalidInputError(
            "the sender's clock is too far off to correct the events' timestamps",
            errors=[
                FieldError(
                    "sent_at",
                    f"is {abs(correction)} {ahead_or_behind} the service's clock; at most "
                    f"{MAX_CLOCK_CORRECTION} is corrected",
                )
            ],
        )
    return correction


def _corrected(event: EventIn, correction: timedelta) -> EventIn:
    """``event`` moved by ``correction``; one at the end of the calendar stays as it is (and is refused as such)."""
    try:
        return msgspec.structs.replace(event, timestamp=event.timestamp + correction)
    except OverflowError:
        return event


def _decoding_error(exc: msgspec.ValidationError) -> ItemErrorOut:
    error = field_error(exc, whole="event")
    return ItemErrorOut(field=error.field, message=error.message)


class EventService:
    """Validates a batch item by item: good events are kept even when others are rejected.

    With a ``buffer``, a batch that meets an unreachable database is held in memory instead
    (see ``registry/experiments/event_buffer.py``) and its items answered ``buffered``.

    With ``erasures`` (this process's), the events of a unit erased within ``ERASURE_IN_FLIGHT_SECONDS`` before
    they were received are answered ``accepted`` and not written, as the exposures of requests in flight during an
    erasure are dropped (``registry.experiments.exposures``). That looks only at the erasures this process heard
    of (no database read per request); the units of the events written are queued, once their transaction
    commits, for the next flush to check against the durable record of erasures and erase again those erased
    meanwhile (``RecentErasures.to_check``), as exposure batches are.
    """

    def __init__(
        self,
        session: AsyncSession,
        limits: EventLimits,
        buffer: EventBuffer | None = None,
        erasures: RecentErasures | None = None,
    ) -> None:
        self.session = session
        self.ingest = IngestRepository(session)
        self.metrics = MetricRepository(session)
        self.experiments = ExperimentRepository(session)
        self.limits = limits
        self.buffer = buffer
        self.erasures = erasures

    async def record(self, batch: EventBatch) -> EventBatchOut:
        now = utcnow()
        correction = clock_correction(batch.sent_at, now)
        results: dict[int, EventResultOut] = {}
        events: dict[int, EventIn] = {}
        for index, raw in enumerate(batch.events):
            try:
                event = msgspec.convert(raw, EventIn)
            except msgspec.ValidationError as exc:
                results[index] = EventResultOut(index=index, status="rejected", errors=[_decoding_error(exc)])
                continue
            if correction:  # before any check: an event is as old or as far ahead as the service's clock says
                event = _corrected(event, correction)
            events[index] = event
        try:
            results |= await self.store(events, now)
        except (SQLAlchemyError, OSError) as exc:
            error = translate_exception(exc)
            if self.buffer is None or not isinstance(error, DatabaseUnavailableError):
                raise
            with contextlib.suppress(SQLAlchemyError, OSError):
                await self.session.rollback()
            results |= self._hold(events, now, self.buffer)

        items = [results[i] for i in range(len(batch.events))]
        return EventBatchOut(
            accepted=sum(1 for r in items if r.status == "accepted"),
            duplicates=sum(1 for r in items if r.status == "duplicate"),
            rejected=sum(1 for r in items if r.status == "rejected"),
            buffered=sum(1 for r in items if r.status == "buffered"),
            items=items,
        )

    async def store(self, events: Mapping[int, EventIn], now: datetime) -> dict[int, EventResultOut]:
        """Check the events against metrics and experiments and insert the good ones; a result per index."""
        results: dict[int, EventResultOut] = {}
        metrics = await self.metrics.by_keys({e.metric for e in events.values()})
        experiments = await self.experiments.ids_by_keys({e.experiment for e in events.values() if e.experiment})

        erased = self._erased_units({e.unit for e in events.values()}, now)
        rows: dict[int, dict[str, Any]] = {}
        keys_in_batch: set[str] = set()
        for index, event in events.items():
            problems = self._problems(event, now, metrics, experiments)
            if problems:
                results[index] = EventResultOut(index=index, status="rejected", errors=problems)
            elif event.idempotency_key in keys_in_batch:
                results[index] = EventResultOut(index=index, status="duplicate")
            elif event.unit in erased:
                results[index] = EventResultOut(index=index, status="accepted")  # and dropped
            else:
                keys_in_batch.add(event.idempotency_key)
                rows[index] = {
                    "idempotency_key": event.idempotency_key,
                    "unit": event.unit,
                    "metric_id": metrics[event.metric].id,
                    "value": event.value,
                    "occurred_at": event.timestamp,
                    "received_at": now,
                    "experiment_id": experiments[event.experiment] if event.experiment else None,
                }
        inserted = await self.ingest.insert_events(list(rows.values())) if rows else set()
        written = {row["unit"] for row in rows.values() if row["idempotency_key"] in inserted}
        await self.ingest.mark_units_changed(written)
        self._check_once_committed(written, now)
        for index, row in rows.items():
            status: Literal["accepted", "duplicate"] = "accepted" if row["idempotency_key"] in inserted else "duplicate"
            results[index] = EventResultOut(index=index, status=status)
        return results

    def _erased_units(self, units: set[str], now: datetime) -> set[str]:
        """The units whose erasure this process heard of within ``ERASURE_IN_FLIGHT_SECONDS`` before ``now``: events
        of requests in flight during the erasure, or held since before it. Hashed only while one is remembered."""
        if not self.erasures:
            return set()
        at = now.timestamp()
        return {unit for unit in units if self.erasures.covers(unit_digest(unit), at)}

    def _check_once_committed(self, units: set[str], received_at: datetime) -> None:
        """The events commit with the caller's transaction, after this returns: an erasure of one of their units
        may commit meanwhile, unheard here yet. Once the transaction commits, their units are queued for the next
        flush to check against the durable record of erasures (``RecentErasures.check_later``)."""
        erasures = self.erasures
        if erasures is None or not units:
            return
        first_seen = dict.fromkeys(units, received_at.timestamp())

        def committed(_session: Session) -> None:
            erasures.check_later(first_seen)

        sqlalchemy.event.listen(self.session.sync_session, "after_commit", committed, once=True)

    def _hold(self, events: Mapping[int, EventIn], now: datetime, buffer: EventBuffer) -> dict[int, EventResultOut]:
        """Reject what can be judged without the database; hold the rest (503 when the buffer has no room)."""
        results: dict[int, EventResultOut] = {}
        held: list[EventIn] = []
        for index, event in events.items():
            problems = self._problems(event, now)
            if problems:
                results[index] = EventResultOut(index=index, status="rejected", errors=problems)
            else:
                held.append(event)
                results[index] = EventResultOut(index=index, status="buffered")
        buffer.hold(held, now)
        return results

    def _problems(
        self,
        event: EventIn,
        now: datetime,
        metrics: Mapping[str, Any] | None = None,
        experiments: Mapping[str, int] | None = None,
    ) -> list[ItemErrorOut]:
        """What is wrong with an event; without ``metrics`` and ``experiments``, only what needs no database."""
        problems: list[ItemErrorOut] = []
        metric = None
        if metrics is not None:
            metric = metrics.get(event.metric)
            if metric is None:
                problems.append(ItemErrorOut(field="metric", message=f"no metric is named '{event.metric}'"))
        if experiments is not None and event.experiment is not None and event.experiment not in experiments:
            problems.append(ItemErrorOut(field="experiment", message=f"no experiment is named '{event.experiment}'"))
        if event.timestamp > now + self.limits.max_future:
            problems.append(ItemErrorOut(field="timestamp", message="is in the future"))
        elif event.timestamp < now - self.limits.max_age:
            problems.append(ItemErrorOut(field="timestamp", message=f"is older than {self.limits.max_age.days} days"))
        if not math.isfinite(event.value):
            problems.append(ItemErrorOut(field="value", message="must be a finite number"))
        elif metric is not None and metric.kind == "binomial" and event.value not in (0.0, 1.0):
            problems.append(ItemErrorOut(field="value", message="a binomial metric takes 0 or 1"))
        return problems


async def write_held_events(
    session: AsyncSession, batches: list[HeldBatch], *, limits: EventLimits, erasures: RecentErasures | None = None
) -> int:
    """Write events held while the database was down, each batch checked as of its arrival; returns rejections."""
    service = EventService(session, limits, erasures=erasures)
    rejected = 0
    for batch in batches:
        results = await service.store(dict(enumerate(batch.events)), batch.received_at)
        rejected += sum(1 for result in results.values() if result.status == "rejected")
    return rejected


class ExposureService:
    """Exposures of units that apps assigned themselves, with the same algorithm (see the client's ``assignment``)."""

    def __init__(self, router: ExperimentRouter, buffer: ExposureBuffer) -> None:
        self.router = router
        self.buffer = buffer

    def record(self, batch: ExposureBatch) -> ExposureBatchOut:
        problems: list[FieldError] = []
        resolved = []
        for index, exposure in enumerate(batch.exposures):
            experiment = self.router.running(exposure.experiment)
            if experiment is None:
                problems.append(FieldError(f"exposures[{index}].experiment", "is not a running experiment"))
                continue
            if exposure.variant not in {v.key for v in experiment.variants}:
                problems.append(FieldError(f"exposures[{index}].variant", "is not a variant of the experiment"))
                continue
            if experiment.rollout:
                # A rollout's split check assumes every unit is on the side its hash gives it (the ranges of
                # the experiment's assignment): an exposure on the other side would move it.
                side = experiment.variants[experiment.assign(exposure.unit).variation].key
                if exposure.variant != side:
                    problems.append(
                        FieldError(
                            f"exposures[{index}].variant",
                            f"is not the side the rollout routes this unit to ('{side}' at the current share)",
                        )
                    )
                    continue
            resolved.append((experiment, exposure))
        if problems:
            raise InvalidInputError(f"{len(problems)} exposure(s) are invalid; none were recorded", errors=problems)
        for experiment, exposure in resolved:
            self.buffer.record(experiment.id, experiment.phase, exposure.unit, exposure.variant)
        return ExposureBatchOut(recorded=len(resolved))
