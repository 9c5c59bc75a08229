"""The transaction boundary: one per request (or CLI command), committed at the end.

Services only ``flush()``; the boundary commits, then publishes the changes the
services recorded, so caches elsewhere never see a state that was rolled back.
Without Redis the changes are also appended to the change log in the same
transaction, so other processes (servers, when a CLI command wrote) read them.
"""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db.change_log import ChangeLogRepository
from registry.lib.changes import ChangeBus, pending_changes


class UnitOfWork:
    """``async with``: a session whose work is committed at the end (and its changes published), or rolled back.

    A class rather than a generator context manager: Litestar never closes a generator dependency (the request's
    ``db_session``) when a dependency resolved after it fails (a page ``limit`` out of range), so the garbage
    collector finalized that dependency and the context manager's generator inside it at once, and the second
    failed ("aclose(): asynchronous generator is already running", logged at ERROR for each such request).
    """

    __slots__ = ("_bus", "_session", "_sessionmaker")

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], bus: ChangeBus) -> None:
        self._sessionmaker = sessionmaker
        self._bus = bus
        self._session: AsyncSession | None = None

    async def __aenter__(self) -> AsyncSession:
        self._session = self._sessionmaker()
        return await self._session.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        session = self._session
        assert session is not None  # entered
        try:
            if exc_type is not None:
                await session.rollback()
                pending_changes(session)
                return
            recorded = session.info.get("changes")
            if recorded and not self._bus.shared:
                await ChangeLogRepository(session).append(recorded, self._bus.origin)
            await session.commit()
            for change in pending_changes(session):
                await self._bus.publish(change)
        finally:
            await session.__aexit__(exc_type, exc, traceback)


def unit_of_work(sessionmaker: async_sessionmaker[AsyncSession], bus: ChangeBus) -> UnitOfWork:
    return UnitOfWork(sessionmaker, bus)
