"""The queries of the OpenAI door's model list: callable prompts and configs, a page at a time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.lib.promotion import State
from registry.lib.versioned import VersionedRepository


class CallableModelRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def in_production(
        self, kind: type[VersionedRepository[Any, Any, Any]], *, after: str | None, limit: int
    ) -> Sequence[tuple[str, datetime]]:
        """Name and creation time of up to ``limit`` resources of ``kind`` with a production version, by name.

        One query, whatever the number of resources: those without a production version are left out by
        the database (the version table's one-production-per-resource index answers the join), not read.
        """
        resource, version = kind.resource_model, kind.version_model
        query = (
            select(resource.name, resource.created_at)
            .join(
                version,
                and_(getattr(version, kind.parent_column) == resource.id, version.state == State.PRODUCTION.value),
            )
            .order_by(resource.name)
            .limit(limit)
        )
        if after is not None:
            query = query.where(resource.name > after)
        return [(name, created_at) for name, created_at in (await self.session.execute(query)).all()]
