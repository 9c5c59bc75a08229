from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.console.models import ConsoleSession


class ConsoleSessionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: ConsoleSession) -> None:
        self.session.add(row)
        await self.session.flush()

    async def get_live(self, token_digest: str, now: datetime) -> ConsoleSession | None:
        query = select(ConsoleSession).where(
            ConsoleSession.token_digest == token_digest, ConsoleSession.expires_at > now
        )
        row: ConsoleSession | None = (await self.session.execute(query)).scalar_one_or_none()
        return row

    async def remove(self, token_digest: str) -> None:
        await self.session.execute(delete(ConsoleSession).where(ConsoleSession.token_digest == token_digest))

    async def remove_expired(self, now: datetime) -> None:
        await self.session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
