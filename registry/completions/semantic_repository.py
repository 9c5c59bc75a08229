"""All SQL of the semantic cache: per-prompt settings and the cached answers with their embeddings."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.models import AuditEntry
from registry.completions.models import SemanticCacheEntry, SemanticCacheSettings
from registry.prompts.models import Prompt, PromptVersion

E = SemanticCacheEntry


def unit_lock_key(digest: str) -> int:
    """The PostgreSQL advisory lock (a signed 64-bit key) that orders a unit's erasure and the answers stored
    for it; another key sharing it only makes one wait for the other."""
    hashed = hashlib.blake2b(f"semantic-cache-unit:{digest}".encode(), digest_size=8).digest()
    return int.from_bytes(hashed, "big", signed=True)


class SemanticCacheRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_prompt(self, name: str) -> Prompt | None:
        return (await self.session.execute(select(Prompt).where(Prompt.name == name))).scalar_one_or_none()

    async def versions_of(self, prompt_id: int) -> Sequence[PromptVersion]:
        query = select(PromptVersion).where(PromptVersion.prompt_id == prompt_id).order_by(PromptVersion.number)
        return (await self.session.execute(query)).scalars().all()

    async def get_settings(self, prompt_id: int, *, for_update: bool = False) -> SemanticCacheSettings | None:
        query = select(SemanticCacheSettings).where(SemanticCacheSettings.prompt_id == prompt_id)
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def keeps_answers(self, prompt_id: int) -> bool:
        """Whether the prompt's cache is on, read under a shared lock on its settings (PostgreSQL): a store that
        reads it waits for a change of the settings in progress, and one in progress waits for the store."""
        query = (
            select(SemanticCacheSettings.enabled)
            .where(SemanticCacheSettings.prompt_id == prompt_id)
            .with_for_update(read=True)
        )
        return bool((await self.session.execute(query)).scalar_one_or_none())

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

    async def lock_unit(self, digest: str, *, erasing: bool) -> None:
        """Order this transaction with the unit's erasure: an erasure takes the lock alone, a store shares it.

        PostgreSQL only (an advisory lock for the transaction); SQLite runs one writing transaction at a time.
        """
        if self.session.get_bind().dialect.name != "postgresql":
            return
        lock = func.pg_advisory_xact_lock if erasing else func.pg_advisory_xact_lock_shared
        await self.session.execute(select(lock(unit_lock_key(digest))))

    async def unit_erased_since(self, digest: str, since: datetime) -> bool:
        """Whether the unit was erased at or after ``since``: its erasure's audit entry is the record of it."""
        query = (
            select(AuditEntry.id)
            .where(
                AuditEntry.resource_type == "unit",
                AuditEntry.resource_name == digest,
                AuditEntry.action == "unit.erase",
                AuditEntry.created_at >= since,
            )
            .limit(1)
        )
        return (await self.session.execute(query)).first() is not None

    async def delete_of_unit(self, digest: str) -> int:
        result = await self.session.execute(delete(E).where(E.unit_digest == digest))
        return int(getattr(result, "rowcount", 0) or 0)
