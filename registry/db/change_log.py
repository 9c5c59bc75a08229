"""The change log: committed changes in the database, for processes that share no Redis.

Without Redis, a change published in one process (a CLI command, another worker)
cannot reach a running server's caches. So every write transaction of such a
deployment also appends its changes here, and every serving process reads
what other processes appended every ``change_log_poll_seconds`` and delivers it
to its own change bus, exactly as a Redis message would be delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Index, String, Text, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from registry.db.base import Base, IdMixin, utcnow
from registry.lib.changes import RESET, Change, ChangeBus
from registry.lib.jobs import PeriodicJob
from registry.lib.logging import error_text

logger = structlog.get_logger("registry.changes")

RETENTION = timedelta(hours=1)
_PURGE_SECONDS = 600.0
_BATCH = 1000


class ChangeLogEntry(IdMixin, Base):
    """One committed change, kept for an hour so every process without Redis reads it."""

    __tablename__ = "change_log"
    __table_args__ = (Index("ix_change_log_created_at", "created_at"),)

    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(32))  # the writing process's bus, which delivered it itself
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChangeLogRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def append(self, changes: Sequence[Change], origin: str) -> None:
        self.session.add_all(ChangeLogEntry(kind=c.kind, name=c.name, action=c.action, origin=origin) for c in changes)
        await self.session.flush()

    async def last_id(self) -> int:
        return int((await self.session.execute(select(func.coalesce(func.max(ChangeLogEntry.id), 0)))).scalar_one())

    async def after(self, entry_id: int, limit: int) -> Sequence[ChangeLogEntry]:
        query = select(ChangeLogEntry).where(ChangeLogEntry.id > entry_id).order_by(ChangeLogEntry.id).limit(limit)
        return (await self.session.execute(query)).scalars().all()

    async def purge(self, before: datetime) -> int:
        result = await self.session.execute(delete(ChangeLogEntry).where(ChangeLogEntry.created_at < before))
        return int(getattr(result, "rowcount", 0) or 0)


class ChangeLogReader:
    """Delivers the changes other processes committed to this process's bus (deployments without Redis)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], bus: ChangeBus) -> None:
        self._sessionmaker = sessionmaker
        self._bus = bus
        self._last_id: int | None = None
        self._failing = False

    def jobs(self, poll_seconds: float) -> list[PeriodicJob]:
        """Every serving process reads the log; one process (the worker role) purges it."""
        return [
            PeriodicJob("change-log", poll_seconds, self._poll_every_interval, run_at_shutdown=False),
            PeriodicJob("change-log-retention", _PURGE_SECONDS, self.purge, shared=True, run_at_shutdown=False),
        ]

    async def start(self) -> None:
        """Read from the end of the log as it is now: this process's caches start empty anyway."""
        await self._poll_every_interval()

    async def _poll_every_interval(self) -> None:
        """``poll``, logging once per outage (not every second) while the database is unreachable."""
        try:
            await self.poll()
        except Exception as exc:
            if not self._failing:
                logger.warning("could not read the change log; retrying every poll", error=error_text(exc))
            self._failing = True
        else:
            self._failing = False

    async def poll(self) -> int:
        """Deliver what was appended since the last poll; returns how many changes were delivered."""
        async with self._sessionmaker() as session:
            repository = ChangeLogRepository(session)
            if self._last_id is None:
                # The first read (or the first after the database was unreachable at start): whatever
                # came before is unknown, so every cache starts over.
                self._last_id = await repository.last_id()
                self._bus.deliver(RESET)
                return 0
            entries = await repository.after(self._last_id, _BATCH)
        delivered = 0
        for entry in entries:
            self._last_id = entry.id
            if entry.origin != self._bus.origin:
                self._bus.deliver(Change(entry.kind, entry.name, entry.action))  # type: ignore[arg-type]
                delivered += 1
        return delivered

    async def purge(self) -> None:
        """Drop entries older than an hour; every reader has long read them."""
        async with self._sessionmaker() as session, session.begin():
            purged = await ChangeLogRepository(session).purge(utcnow() - RETENTION)
        if purged:
            logger.info("purged the change log", rows=purged)
