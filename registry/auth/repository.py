from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.models import ApiKey, AuditEntry
from registry.lib.pagination import PageRequest


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        await self.session.flush()
        return key

    async def get_by_public_id(self, public_id: str) -> ApiKey | None:
        result = await self.session.execute(select(ApiKey).where(ApiKey.public_id == public_id))
        return result.scalar_one_or_none()

    async def any_exist(self) -> bool:
        return bool(await self.session.scalar(select(exists().where(ApiKey.id.is_not(None)))))

    async def list(self, page: PageRequest, *, include_revoked: bool) -> Sequence[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.id).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(ApiKey.id > page.after_number)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        return (await self.session.scalars(query)).all()

    async def set_last_used(self, used_at: Mapping[int, datetime]) -> None:
        for key_id, at in used_at.items():
            await self.session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=at))


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, entry: AuditEntry) -> None:
        self.session.add(entry)
        await self.session.flush()

    async def list(
        self,
        page: PageRequest,
        *,
        actor: str | None = None,
        resource_type: str | None = None,
        resource_name: str | None = None,
    ) -> Sequence[AuditEntry]:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(AuditEntry.id < page.after_number)
        if actor is not None:
            query = query.where(AuditEntry.actor == actor)
        if resource_type is not None:
            query = query.where(AuditEntry.resource_type == resource_type)
        if resource_name is not None:
            query = query.where(AuditEntry.resource_name == resource_name)
        return (await self.session.scalars(query)).all()
