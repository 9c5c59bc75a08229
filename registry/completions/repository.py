"""All SQL of the completions domain: usage records, aggregates, budgets, retention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Date, Integer, case, cast, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.models import ApiKey
from registry.completions.models import ApiKeyBudget, CompletionRecord

C = CompletionRecord


class CompletionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_records(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            await self.session.execute(insert(CompletionRecord), list(rows))

    def _day(self) -> ColumnElement[Any]:
        """The UTC day of a record, typed as a date: SQLite's ``date()`` returns text that ``Date`` parses."""
        if self.session.get_bind().dialect.name == "postgresql":
            return func.date(func.timezone("UTC", C.created_at), type_=Date)
        return func.date(C.created_at, type_=Date)

    async def aggregate(
        self,
        group_by: Sequence[str],
        *,
        since: datetime,
        until: datetime,
        prompt: str | None,
        key: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        dimensions: dict[str, Any] = {
            "prompt": C.prompt,
            "version": C.prompt_version,
            "config": C.config,
            "config_version": C.config_version,
            "key": C.api_key_id,
            "day": self._day(),
            "experiment": C.experiment_key,
            "variant": C.variant,
        }
        groups = [dimensions[name].label(name) for name in group_by]
        query = (
            select(
                *groups,
                func.count().label("requests"),
                _count_where(C.status != "ok").label("errors"),
                _count_where(C.cached.is_(True)).label("cached"),
                _count_where(C.fallback_used.is_(True)).label("fallbacks"),
                func.coalesce(func.sum(C.input_tokens), 0).label("input_tokens"),
                func.coalesce(func.sum(C.output_tokens), 0).label("output_tokens"),
                func.coalesce(func.sum(C.cost), 0.0).label("cost"),
                func.avg(C.latency_ms).label("mean_latency_ms"),
                func.avg(C.ttft_ms).label("mean_ttft_ms"),
            )
            .where(C.created_at >= since, C.created_at < until)
            .limit(limit)
        )
        if prompt is not None:
            query = query.where(C.prompt == prompt)
        if key is not None:
            query = query.where(C.api_key_id == key)
        if groups:
            query = query.group_by(*groups).order_by(*groups)
        return [dict(row._mapping) for row in (await self.session.execute(query)).all()]

    async def month_usage(self, key: str, since: datetime) -> tuple[int, float]:
        """Tokens and cost a key spent on the backends since ``since`` (cache hits cost nothing)."""
        query = select(
            func.coalesce(func.sum(C.input_tokens + C.output_tokens), 0),
            func.coalesce(func.sum(C.cost), 0.0),
        ).where(C.api_key_id == key, C.created_at >= since, C.cached.is_(False))
        tokens, cost = (await self.session.execute(query)).one()
        return int(tokens), float(cost)

    async def purge_texts(self, before: datetime) -> int:
        """Clear stored prompts and completion texts older than ``before``; returns how many rows."""
        result = await self.session.execute(
            update(CompletionRecord)
            .where(
                C.created_at < before,
                (C.prompt_text.is_not(None)) | (C.completion_text.is_not(None)),
            )
            .values(prompt_text=None, completion_text=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    # -- budgets

    async def get_key(self, public_id: str) -> ApiKey | None:
        return (await self.session.execute(select(ApiKey).where(ApiKey.public_id == public_id))).scalar_one_or_none()

    async def get_budget(self, key_id: int) -> ApiKeyBudget | None:
        return await self.session.get(ApiKeyBudget, key_id)

    async def budgets_of(self, key_ids: Sequence[int]) -> list[ApiKeyBudget]:
        """The budgets of these keys, in one query (keys without one have no row)."""
        if not key_ids:
            return []
        query = select(ApiKeyBudget).where(ApiKeyBudget.api_key_id.in_(key_ids))
        return list((await self.session.scalars(query)).all())

    async def budget_of(self, public_id: str) -> ApiKeyBudget | None:
        query = (
            select(ApiKeyBudget).join(ApiKey, ApiKey.id == ApiKeyBudget.api_key_id).where(ApiKey.public_id == public_id)
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def save_budget(self, budget: ApiKeyBudget) -> None:
        self.session.add(budget)
        await self.session.flush()

    async def delete_budget(self, budget: ApiKeyBudget) -> None:
        await self.session.delete(budget)
        await self.session.flush()


def _count_where(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(cast(case((condition, 1), else_=0), Integer))
