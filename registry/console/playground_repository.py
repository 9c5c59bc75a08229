"""The playground's one query of its own: the model config versions a person may run a prompt with."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.configs.models import ModelConfig, ModelConfigVersion


class PlaygroundRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def config_versions(self, limit: int) -> Sequence[tuple[str, ModelConfigVersion]]:
        """Up to ``limit`` config versions with their config's name, by name, newest first."""
        query = (
            select(ModelConfig.name, ModelConfigVersion)
            .join(ModelConfigVersion, ModelConfigVersion.config_id == ModelConfig.id)
            .order_by(ModelConfig.name, ModelConfigVersion.number.desc())
            .limit(limit)
        )
        rows = (await self.session.execute(query)).all()
        return [(name, version) for name, version in rows]
