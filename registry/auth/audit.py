"""The audit log: every mutation, written in the same transaction as the change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.models import AuditEntry
from registry.auth.principal import Actor
from registry.auth.repository import AuditRepository
from registry.lib.pagination import PageRequest


class AuditLog:
    def __init__(self, session: AsyncSession) -> None:
        self.repository = AuditRepository(session)

    async def record(
        self,
        actor: Actor,
        action: str,
        resource_type: str,
        resource_name: str,
        *,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        await self.repository.add(
            AuditEntry(
                actor=actor.name,
                actor_key_id=actor.key_public_id,
                action=action,
                resource_type=resource_type,
                resource_name=resource_name,
                before=before,
                after=after,
                request_id=actor.request_id,
            )
        )

    async def list(
        self,
        page: PageRequest,
        *,
        actor: str | None = None,
        resource_type: str | None = None,
        resource_name: str | None = None,
    ) -> Sequence[AuditEntry]:
        return await self.repository.list(page, actor=actor, resource_type=resource_type, resource_name=resource_name)
