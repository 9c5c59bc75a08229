"""The SQL of backup, restore and the readiness report."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.schema import Table

from registry.auth.models import ApiKey, AuditEntry
from registry.completions.models import CompletionRecord
from registry.evals.models import EvalGate
from registry.prompts.models import Prompt, PromptVersion

BACKUP_ACTION = "backup.create"


class TableRepository:
    """Whole tables, read and written through Core (no ORM objects, so big tables stream)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def revision(self) -> str | None:
        try:
            result = await self.connection.execute(text("SELECT version_num FROM alembic_version"))
        except Exception:  # no alembic_version table: never migrated
            return None
        return result.scalar_one_or_none()

    async def rows(self, table: Table, *, batch: int = 1000) -> AsyncIterator[Any]:
        """The table's rows in primary-key order (a child row that points at an earlier one comes after it)."""
        query = select(table).order_by(*table.primary_key.columns).execution_options(yield_per=batch)
        result = await self.connection.stream(query)
        async for row in result.mappings():
            yield row

    async def non_empty(self, tables: Sequence[Table]) -> list[str]:
        names = []
        for table in tables:
            if await self.connection.scalar(select(select(table).limit(1).exists())):
                names.append(table.name)
        return names

    async def insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self.connection.execute(insert(table), rows)

    async def reset_sequences(self, tables: Sequence[Table]) -> None:
        """PostgreSQL: move each id sequence past the restored ids, so the next insert does not collide."""
        if self.connection.dialect.name != "postgresql":
            return
        for table in tables:
            key = list(table.primary_key.columns)
            if len(key) != 1 or not isinstance(key[0].type, Integer) or key[0].autoincrement is False:
                continue
            sequence = await self.connection.scalar(
                text("SELECT pg_get_serial_sequence(:table, :column)"), {"table": table.name, "column": key[0].name}
            )
            if sequence is None:
                continue
            highest = await self.connection.scalar(select(func.max(key[0])))
            await self.connection.execute(
                text("SELECT setval(:sequence, :value, :called)"),
                {"sequence": sequence, "value": highest or 1, "called": highest is not None},
            )


class DoctorRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def revision(self) -> str | None:
        connection = await self.session.connection()
        return await TableRepository(connection).revision()

    async def active_keys(self) -> Sequence[ApiKey]:
        return (await self.session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.id))).all()

    async def production_prompts_without_gate(self) -> list[str]:
        has_production = select(PromptVersion.id).where(
            PromptVersion.prompt_id == Prompt.id, PromptVersion.state == "production"
        )
        has_gate = select(EvalGate.id).where(EvalGate.prompt_id == Prompt.id, EvalGate.state == "production")
        query = select(Prompt.name).where(has_production.exists(), ~has_gate.exists()).order_by(Prompt.name)
        return list((await self.session.scalars(query)).all())

    async def stored_texts_before(self, before: datetime) -> int:
        query = select(func.count()).where(
            CompletionRecord.created_at < before,
            (CompletionRecord.prompt_text.is_not(None)) | (CompletionRecord.completion_text.is_not(None)),
        )
        return int(await self.session.scalar(query) or 0)

    async def prompts_storing_texts(self) -> int:
        return int(await self.session.scalar(select(func.count()).where(Prompt.store_io.is_(True))) or 0)

    async def last_backup_at(self) -> datetime | None:
        query = select(func.max(AuditEntry.created_at)).where(AuditEntry.action == BACKUP_ACTION)
        value: datetime | None = await self.session.scalar(query)
        return value
