from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from registry.configs.models import ModelConfigVersion
from registry.lib.promotion import HELD_STATES
from registry.lib.versioned import VersionedRepository
from registry.prompts.models import Prompt, PromptTransition, PromptVersion

WITH_CONFIG = (
    joinedload(PromptVersion.config_version).joinedload(ModelConfigVersion.config),
    joinedload(PromptVersion.config_version)
    .joinedload(ModelConfigVersion.fallback)
    .joinedload(ModelConfigVersion.config),
)


class PromptRepository(VersionedRepository[Prompt, PromptVersion, PromptTransition]):
    resource_model = Prompt
    version_model = PromptVersion
    transition_model = PromptTransition
    parent_column = "prompt_id"
    version_options = WITH_CONFIG


class PromptCatalogRepository:
    """The read-path queries: a prompt with every labelled version, in one round trip."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def load_labelled(self, name: str) -> tuple[Prompt | None, Sequence[PromptVersion]]:
        """The prompt and its production, staging and latest versions (with linked configs)."""
        query = (
            select(Prompt, PromptVersion)
            .outerjoin(
                PromptVersion,
                (PromptVersion.prompt_id == Prompt.id)
                & or_(
                    PromptVersion.state.in_([s.value for s in HELD_STATES]),
                    PromptVersion.number == Prompt.latest_version,
                ),
            )
            .where(Prompt.name == name)
            .options(*WITH_CONFIG)
        )
        rows = (await self.session.execute(query)).unique().all()
        if not rows:
            return None, []
        return rows[0][0], [version for _, version in rows if version is not None]

    async def load_version(self, prompt_id: int, number: int) -> PromptVersion | None:
        query = (
            select(PromptVersion)
            .where(PromptVersion.prompt_id == prompt_id, PromptVersion.number == number)
            .options(*WITH_CONFIG)
        )
        return (await self.session.execute(query)).scalar_one_or_none()
