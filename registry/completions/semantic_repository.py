"""All SQL of the semantic cache: per-prompt settings and the cached answers with their embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.completions.models import SemanticCacheEntry, SemanticCacheSettings
from registry.prompts.models import Prompt, PromptVersion

E = SemanticCacheEntry


class SemanticCacheRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_prompt(self, name: str) -> Prompt | None:
        return (await self.session.execute(select(Prompt).where(Prompt.name == name))).scalar_one_or_none()

    async def versions_of(self, prompt_id: int) -> Sequence[PromptVersion]:
        query = select(PromptVersion).where(PromptVersion.prompt_id == prompt_id).order_by(PromptVersion.number)
        return (await self.session.execute(query)).scalars().all()

    async def get_settings(self, prompt_id: int) -> SemanticCacheSettings | None:
        return await self.session.get(SemanticCacheSettings, prompt_id)

    async def settings_of_prompt(self, name: str) -> tuple[int, SemanticCacheSettings | None] | None:
        """The prompt's id and its settings (None: never set), or None when no prompt has that name."""
        query = (
            select(Prompt.id, SemanticCacheSettings)
            .outerjoin(SemanticCacheSettings, SemanticCacheSettings.prompt_id == Prompt.id)
            .where(Prompt.name == name)
        )
        row = (await self.session.execute(query)).one_or_none()
        return None if row is None else (row[0], row[1])

    async def save_settings(self, settings: SemanticCacheSettings) -> None:
        self.session.add(settings)
        await self.session.flush()

    async def candidates(self, scope: str, *, now: datetime, limit: int) -> list[tuple[int, bytes]]:
        """The ``limit`` newest unexpired entries of ``scope``: their ids and embeddings."""
        query = (
            select(E.id, E.embedding)
            .where(E.scope == scope, E.expires_at > now)
            .order_by(E.created_at.desc(), E.id.desc())
            .limit(limit)
        )
        return [(row[0], row[1]) for row in (await self.session.execute(query)).all()]

    async def get_entry(self, entry_id: int) -> SemanticCacheEntry | None:
        return await self.session.get(E, entry_id)

    async def add_entry(self, entry: SemanticCacheEntry) -> None:
        self.session.add(entry)
        await self.session.flush()

    async def purge_expired(self, now: datetime) -> int:
        result = await self.session.execute(delete(E).where(E.expires_at <= now))
        return int(getattr(result, "rowcount", 0) or 0)

    async def delete_of_prompt(self, prompt: str) -> int:
        """Delete every entry of the prompt, of all its versions (its storage policy stopped keeping answers)."""
        result = await self.session.execute(delete(E).where(E.prompt == prompt))
        return int(getattr(result, "rowcount", 0) or 0)

    async def entries_of_unit(self, digest: str) -> Sequence[SemanticCacheEntry]:
        """The entries that answered a unit's requests (by its digest), oldest first."""
        query = select(E).where(E.unit_digest == digest).order_by(E.created_at, E.id)
        return (await self.session.execute(query)).scalars().all()

    async def delete_of_unit(self, digest: str) -> int:
        result = await self.session.execute(delete(E).where(E.unit_digest == digest))
        return int(getattr(result, "rowcount", 0) or 0)
