"""Every window query of an alert rule is answered through an index on PostgreSQL: the planner, told to avoid
sequential scans where it can, bounds completions by ``created_at`` (or the key's index) and rollbacks by
``rollout_events.at``. A query no index serves would still scan the table, and fail here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.alerts.repository import Selection, budget_query, completion_query, month_spend_query, rollback_query
from registry.db.base import utcnow

NOW = utcnow()
SINCE = NOW - timedelta(minutes=5)
QUERIES = [
    (
        "error rate of a prompt",
        completion_query(Selection("error_rate", prompt="greet"), SINCE, NOW, quantile_in_sql=True),
    ),
    (
        "error rate per backend",
        completion_query(Selection("error_rate", group_by="backend"), SINCE, NOW, quantile_in_sql=True),
    ),
    (
        "p95 latency of a key",
        completion_query(Selection("latency_p95", api_key="abc"), SINCE, NOW, quantile_in_sql=True),
    ),
    (
        "p95 ttft per prompt",
        completion_query(Selection("ttft_p95", group_by="prompt"), SINCE, NOW, quantile_in_sql=True),
    ),
    (
        "cost per hour of a backend",
        completion_query(Selection("cost_per_hour", backend="steady"), SINCE, NOW, quantile_in_sql=True),
    ),
    (
        "breaker refusals per backend",
        completion_query(Selection("breaker_open", group_by="backend"), SINCE, NOW, quantile_in_sql=True),
    ),
    ("budget spend this month", month_spend_query(["abc", "def"], SINCE)),
]


async def plan(engine: AsyncEngine, query: Select[Any]) -> str:
    compiled = query.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    async with engine.connect() as connection:
        await connection.exec_driver_sql("SET enable_seqscan = off")
        result = await connection.exec_driver_sql(f"EXPLAIN {compiled}", params)
        return "\n".join(row[0] for row in result.all())


@pytest.mark.parametrize("query", [q for _, q in QUERIES], ids=[name for name, _ in QUERIES])
async def test_a_completion_window_is_read_through_an_index(clean_database: AsyncEngine, query: Select[Any]) -> None:
    explained = await plan(clean_database, query)
    assert "Seq Scan on completions" not in explained, explained
    assert "Index Cond" in explained, explained
    assert "created_at" in explained, explained


async def test_rollbacks_in_a_window_are_read_through_their_time_index(clean_database: AsyncEngine) -> None:
    explained = await plan(clean_database, rollback_query(Selection("rollout_rolled_back"), SINCE, NOW))
    assert "ix_rollout_events_at" in explained, explained


async def test_budgets_are_read_with_their_keys(clean_database: AsyncEngine) -> None:
    explained = await plan(clean_database, budget_query(Selection("budget", api_key="abc")))
    assert "Seq Scan on api_keys" not in explained, explained
