"""The daily usage rollup gives the reports over whole days exactly what the completions give.

Completions are seeded across four UTC days (on both sides of midnights, one stamped in another time
zone), three keys and none, with and without config, experiment, latency; costs and latencies are
binary fractions, so sums are exact in any order. The rollup's report is compared with the report
computed from the completions for each grouping the API offers; ``GET /v1/usage`` and the console's
usage page agree on the totals; migration 0008 rebuilds the same rollup from the completions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from registry.completions.models import DailyUsage
from registry.completions.repository import CompletionRepository
from registry.console.service import ConsoleAccess
from registry.console.usage import OTHER, usage_figures
from registry.db import migrate
from registry.db.engine import create_engine, create_sessionmaker
from registry.settings import Settings
from tests.conftest import AppClient
from tests.experiments.conftest import runtime_of
from tests.experiments.test_hourly_rollup import rollup_settings  # noqa: F401

FIRST = date(2026, 3, 13)
MIDNIGHT = datetime(2026, 3, 14, tzinfo=UTC)
GROUPINGS = [
    [],
    ["day"],
    ["day", "prompt"],
    ["day", "key"],
    ["prompt", "version", "config", "key", "day"],
    ["experiment", "variant"],
    ["config", "config_version", "day"],
]


def completion(at: datetime | None, prompt: str, key: str | None, n: int, **extra: Any) -> dict[str, Any]:
    record = {
        "prompt": prompt,
        "prompt_version": 1 + n % 2,
        "config": "fast" if n % 3 else None,
        "config_version": 2 if n % 3 else None,
        "api_key_id": key,
        "status": "error" if n % 7 == 0 else "ok",
        "input_tokens": 10 + n,
        "output_tokens": 3 * n,
        "cost": n / 64,
        "latency_ms": 100 + n / 4 if n % 5 else None,
        "ttft_ms": 20 + n / 8 if n % 4 else None,
        "cached": n % 6 == 0,
        "fallback_used": n % 9 == 0,
        **extra,
    }
    return {**record, "created_at": at} if at is not None else record


def seeded() -> list[list[dict[str, Any]]]:
    """Three batches (as three flushes), over 2026-03-13 to 2026-03-16 UTC."""
    keys = ["k1", "k2", "k3", None]
    first = [
        completion(MIDNIGHT - timedelta(days=1) + timedelta(hours=n), "greet", keys[n % 4], n) for n in range(1, 20)
    ]
    second = [
        completion(MIDNIGHT - timedelta(microseconds=1), "greet", "k1", 21),  # the 13th's last moment
        completion(MIDNIGHT, "greet", "k1", 22),  # the 14th's first
        # 01:30 at UTC+2 is 23:30 UTC on the 13th.
        completion(datetime(2026, 3, 14, 1, 30, tzinfo=timezone(timedelta(hours=2))), "summarize", "k2", 23),
        completion(MIDNIGHT + timedelta(hours=5), "summarize", None, 24, experiment_key="tone", variant="control"),
        completion(MIDNIGHT + timedelta(hours=6), "summarize", "k3", 25, experiment_key="tone", variant="treatment"),
    ]
    third = [
        completion(MIDNIGHT + timedelta(days=1, hours=n), "summarize" if n % 2 else "greet", keys[n % 3], 30 + n)
        for n in range(0, 30)
    ]
    return [first, second, third]


async def seed(sessionmaker: async_sessionmaker[Any]) -> None:
    for batch in seeded():
        async with sessionmaker() as session, session.begin():
            await CompletionRepository(session).add_records(batch)


async def both_reports(
    sessionmaker: async_sessionmaker[Any], group_by: Sequence[str], **narrowed: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    since = datetime(FIRST.year, FIRST.month, FIRST.day, tzinfo=UTC)
    window: dict[str, Any] = {
        "since": since,
        "until": since + timedelta(days=4),
        "limit": 1000,
        "prompt": None,
        "key": None,
    }
    async with sessionmaker() as session:
        repository = CompletionRepository(session)
        rollup = await repository.aggregate(group_by, **{**window, **narrowed})
        completions = await repository.aggregate(group_by, **{**window, **narrowed}, from_completions=True)
    return rollup, completions


async def rollup_rows(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with create_sessionmaker(engine)() as session:
        return sorted(tuple(row) for row in (await session.execute(select(*DailyUsage.__table__.c))).all())


async def test_the_rollup_reports_what_the_completions_report(rollup_settings: Settings) -> None:  # noqa: F811
    engine = create_engine(rollup_settings)
    try:
        sessionmaker = create_sessionmaker(engine)
        await seed(sessionmaker)

        for group_by in GROUPINGS:
            rollup, completions = await both_reports(sessionmaker, group_by)
            assert rollup == completions, group_by
        for narrowed in ({"prompt": "summarize"}, {"key": "k1"}, {"prompt": "greet", "key": "k2"}):
            rollup, completions = await both_reports(sessionmaker, ["day", "key"], **narrowed)
            assert rollup == completions, narrowed
        by_day, _ = await both_reports(sessionmaker, ["day"])
        assert [row["day"] for row in by_day] == [FIRST + timedelta(days=d) for d in range(4)]
        # Midnight's last moment and the UTC+2 record fall on the 13th, the next moment on the 14th.
        assert [row["requests"] for row in by_day] == [19 + 2, 3, 24, 6]
        assert sum(row["requests"] for row in by_day) == sum(len(batch) for batch in seeded())

        kept = await rollup_rows(engine)
        await migrate.downgrade(engine, "0007")
        await migrate.upgrade(engine)
        assert await rollup_rows(engine) == kept
    finally:
        await engine.dispose()


async def test_the_usage_api_and_the_usage_page_agree_on_the_totals(client: AppClient, admin: dict[str, str]) -> None:
    runtime = runtime_of(client.app)
    await seed(runtime.sessionmaker)
    records = [record for batch in seeded() for record in batch]
    last = FIRST + timedelta(days=3)
    query = f"since={FIRST}&until={last}&group_by=key&group_by=day"
    response = await client.get(f"/v1/usage?{query}", headers=admin)
    assert response.status_code == 200, response.text
    items = response.json()["items"]

    async with runtime.sessionmaker() as session:
        page = await ConsoleAccess(session, runtime.completions).usage_page(
            by="key", days=4, last=last, show_keys=False
        )

    assert sum(item["requests"] for item in items) == page.figures.requests == len(records)
    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in records)
    assert sum(item["input_tokens"] + item["output_tokens"] for item in items) == page.figures.tokens == tokens
    assert sum(item["cost"] for item in items) == page.figures.cost == sum(r["cost"] for r in records)
    assert {item["key"] for item in items} == {"k1", "k2", "k3", None}


async def test_the_usage_page_with_many_groups_shows_what_one_row_per_day_and_group_shows(
    client: AppClient,
) -> None:
    """Twelve prompts and twelve keys: the page reads the largest groups' days and the rest summed per day."""
    runtime = runtime_of(client.app)
    batch = [
        completion(MIDNIGHT + timedelta(days=n % 3, hours=n % 24), f"p{n % 12:02d}", f"k{n % 12:02d}", n)
        for n in range(1, 200)
    ]
    async with runtime.sessionmaker() as session, session.begin():
        await CompletionRepository(session).add_records(batch)
    last = FIRST + timedelta(days=3)
    since = datetime(FIRST.year, FIRST.month, FIRST.day, tzinfo=UTC)

    for by in ("prompt", "key"):
        async with runtime.sessionmaker() as session:
            access = ConsoleAccess(session, runtime.completions)
            page = await access.usage_page(by=by, days=4, last=last, show_keys=False)
            rows, _ = await access.usage.report(
                ["day", by], since=since, until=since + timedelta(days=4), prompt=None, key=None, limit=1000
            )
        expected = usage_figures(rows, by=by, first=FIRST, last=last, labels={})

        assert page.figures.groups == expected.groups
        assert page.figures.groups[-1].label == OTHER
        assert page.figures.days == expected.days
        shown = (page.figures.requests, page.figures.tokens, page.figures.cost)
        assert shown == (expected.requests, expected.tokens, expected.cost)
        assert page.figures.tokens_chart == expected.tokens_chart
        assert page.figures.cost_chart == expected.cost_chart
