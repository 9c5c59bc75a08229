"""The transaction boundary: one per request (or CLI command), committed at the end.

Services only ``flush()``; the boundary commits, then publishes the changes the
services recorded, so caches elsewhere never see a state that was rolled back.
Without Redis the changes are also appended to the change log in the same
transaction, so other processes (servers, when a CLI command wrote) read them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db.change_log import ChangeLogRepository
from registry.lib.changes import ChangeBus, pending_changes


@asynccontextmanager
async def unit_of_work(sessionmaker: async_sessionmaker[AsyncSession], bus: ChangeBus) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            pending_changes(session)
            raise
        recorded = session.info.get("changes")
        if recorded and not bus.shared:
            await ChangeLogRepository(session).append(recorded, bus.origin)
        await session.commit()
        for change in pending_changes(session):
            await bus.publish(change)
