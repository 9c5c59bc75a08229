"""The usage report's ``day`` is a date on both databases; a token budget past its column is refused by field."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.repository import CompletionRepository
from registry.db.engine import create_sessionmaker
from tests.conftest import problem

NOON = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


async def test_usage_grouped_by_day_gives_dates_on_postgresql_and_sqlite(migrated_engine: AsyncEngine) -> None:
    sessionmaker = create_sessionmaker(migrated_engine)
    async with sessionmaker() as session, session.begin():
        repository = CompletionRepository(session)
        await repository.add_records([{"created_at": NOON, "prompt": "greet", "status": "ok", "input_tokens": 3}])
        rows = await repository.aggregate(
            ["day"], since=NOON - timedelta(days=1), until=NOON + timedelta(days=1), prompt=None, key=None, limit=10
        )

    assert [row["day"] for row in rows] == [date(2026, 3, 14)]
    assert type(rows[0]["day"]) is date


async def test_a_token_budget_past_the_column_is_refused_naming_the_field(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    created = await client.post("/v1/keys", json={"name": "app", "scopes": ["read"]}, headers=admin)
    key_id = created.json()["api_key"]["id"]

    refused = await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 2_147_483_648}, headers=admin)
    accepted = await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 2_147_483_647}, headers=admin)

    assert refused.status_code == 422
    assert [error["field"] for error in problem(refused)["errors"]] == ["monthly_tokens"]
    assert accepted.status_code == 200
    assert accepted.json()["monthly_tokens"] == 2_147_483_647
