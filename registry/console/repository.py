from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from registry.console.models import ConsoleSession


class ConsoleSessionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: ConsoleSession) -> None:
        self.session.add(row)
        await self.session.flush()

    async def add_first(self, row: ConsoleSession) -> bool:
        """Add the row unless one with its id is there: of two requests adding it at once, only one adds it."""
        try:
            async with self.session.begin_nested():
                self.session.add(row)
                await self.session.flush()
        except IntegrityError:
            return False
        return True

    async def get_live(self, token_digest: str, now: datetime) -> ConsoleSession | None:
        query = select(ConsoleSession).where(
            ConsoleSession.token_digest == token_digest, ConsoleSession.expires_at > now
        )
        row: ConsoleSession | None = (await self.session.execute(query)).scalar_one_or_none()
        return row

    async def take_live(self, token_digest: str, now: datetime) -> ConsoleSession | None:
        """The live row, removed: of two requests taking it at once, only the one whose delete removed it gets it."""
        row = await self.get_live(token_digest, now)
        if row is None:
            return None
        removed = await self.session.execute(delete(ConsoleSession).where(ConsoleSession.token_digest == token_digest))
        return row if getattr(removed, "rowcount", 0) == 1 else None

    async def remove(self, token_digest: str) -> None:
        await self.session.execute(delete(ConsoleSession).where(ConsoleSession.token_digest == token_digest))

    async def remove_expired(self, now: datetime) -> None:
        await self.session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
