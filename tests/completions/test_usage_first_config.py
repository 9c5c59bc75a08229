"""Usage by config counts what a failed-over completion's first config's backend spent under that config, the same
from the daily rollup, from the completions (a window that is not whole days) and from a rebuilt rollup, on
PostgreSQL and SQLite; grouped otherwise, such a completion is counted whole, once.

Costs are binary fractions, so sums are exact in any order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from registry.completions.models import DailyUsage
from registry.completions.repository import CompletionRepository
from registry.db.engine import create_engine, create_sessionmaker
from registry.settings import Settings
from tests.experiments.test_hourly_rollup import rollup_settings  # noqa: F401

DAY = datetime(2026, 3, 14, tzinfo=UTC)


def completion(hour: int, config: str, **extra: Any) -> dict[str, Any]:
    return {
        "created_at": DAY + timedelta(hours=hour),
        "prompt": "greet",
        "prompt_version": 1,
        "config": config,
        "config_version": 1,
        "api_key_id": "k1",
        "status": "ok",
        "input_tokens": 7,
        "output_tokens": 3,
        "cost": 1 / 64,
        "latency_ms": 100.0,
        "ttft_ms": 20.0,
        **extra,
    }


RECORDS = [
    completion(1, "cfg"),
    # Broke off on cfg after 7 + 2 tokens (1/32), then answered on spare (7 + 3 tokens, 1/8): charged both.
    completion(
        2,
        "spare",
        fallback_used=True,
        input_tokens=14,
        output_tokens=5,
        cost=1 / 32 + 1 / 8,
        first_config="cfg",
        first_config_version=1,
        first_input_tokens=7,
        first_output_tokens=2,
        first_cost=1 / 32,
    ),
    # The same, and spare then failed too, having generated nothing.
    completion(
        3,
        "spare",
        status="error",
        fallback_used=True,
        input_tokens=7,
        output_tokens=2,
        cost=1 / 32,
        latency_ms=50.0,
        ttft_ms=None,
        first_config="cfg",
        first_config_version=1,
        first_input_tokens=7,
        first_output_tokens=2,
        first_cost=1 / 32,
    ),
    # Failed over before any token: nothing of the first config's to count.
    completion(4, "spare", fallback_used=True),
]

EXPECTED = {  # config: requests, errors, fallbacks, input and output tokens, cost, mean latency
    "cfg": (1, 0, 0, 7 + 7 + 7, 3 + 2 + 2, 1 / 64 + 1 / 32 + 1 / 32, 100.0),
    "spare": (3, 1, 3, 7 + 0 + 7, 3 + 0 + 3, 1 / 8 + 0 + 1 / 64, (100.0 + 50.0 + 100.0) / 3),
}


def by_config(rows: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    measures = ("requests", "errors", "fallbacks", "input_tokens", "output_tokens", "cost", "mean_latency_ms")
    return {row["config"]: tuple(row[name] for name in measures) for row in rows}


async def reports(repository: CompletionRepository, group_by: list[str]) -> list[list[dict[str, Any]]]:
    """The report from the rollup (whole days), from the completions, and over a window that is not whole days."""
    window: dict[str, Any] = {"prompt": None, "key": None, "limit": 100}
    whole = {"since": DAY, "until": DAY + timedelta(days=1)}
    return [
        await repository.aggregate(group_by, **whole, **window),
        await repository.aggregate(group_by, **whole, **window, from_completions=True),
        await repository.aggregate(
            group_by, since=DAY + timedelta(minutes=30), until=DAY + timedelta(hours=5), **window
        ),
    ]


async def test_usage_by_config_counts_the_first_configs_part_under_it_from_the_rollup_and_the_completions(
    rollup_settings: Settings,  # noqa: F811
) -> None:
    engine = create_engine(rollup_settings)
    try:
        sessionmaker = create_sessionmaker(engine)
        async with sessionmaker() as session, session.begin():
            await CompletionRepository(session).add_records(RECORDS)

        async with sessionmaker() as session:
            repository = CompletionRepository(session)
            for group_by in (["config", "config_version"], ["config", "key", "day"]):
                for report in await reports(repository, group_by):
                    assert by_config(report) == EXPECTED, group_by
            for report in await reports(repository, ["prompt"]):
                [row] = report
                assert (row["requests"], row["input_tokens"], row["output_tokens"]) == (4, 35, 13)
                assert row["cost"] == 1 / 64 + 1 / 32 + 1 / 8 + 1 / 32 + 1 / 64

        async with sessionmaker() as session:
            kept = sorted(tuple(row) for row in (await session.execute(select(*DailyUsage.__table__.c))).all())
        async with sessionmaker() as session, session.begin():
            await CompletionRepository(session).rebuild_rollup()
        async with sessionmaker() as session:
            rebuilt = sorted(tuple(row) for row in (await session.execute(select(*DailyUsage.__table__.c))).all())
        assert rebuilt == kept
    finally:
        await engine.dispose()
