"""GET /v1/experiments/{key}/results/timeseries: units and the primary metric over time, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from registry.app import create_app
from registry.auth.keys import Scope
from registry.experiments.repository import IngestRepository
from registry.experiments.timeseries import TimelineRow, cumulative_series
from registry.settings import Settings
from tests.conftest import KeyFactory, make_key_on, problem, serve_in_process
from tests.experiments.conftest import (
    Client,
    flush_and_aggregate,
    make_experiment,
    make_metric,
    make_prompt,
    runtime_of,
)
from tests.experiments.test_sqlite import sqlite_settings  # noqa: F401

CASES = json.loads((Path(__file__).parent / "cases" / "timeseries.json").read_text())
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("rows", "variants", "interval", "aggregation", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cumulative_series(
    rows: list[list[Any]], variants: list[str], interval: Any, aggregation: str | None, expected: dict[str, Any]
) -> None:
    timeline = [TimelineRow(datetime.fromisoformat(at), v, n, valued, total) for at, v, n, valued, total in rows]
    series = cumulative_series(timeline, variants, interval, aggregation)
    shown = {
        v: [[p.at.isoformat(), p.units, p.cumulative_units, p.mean] for p in points] for v, points in series.items()
    }
    assert shown == expected


async def expose_over_three_hours(client: Client, headers: dict[str, str]) -> datetime:
    """Units first exposed in three hours with one empty hour between, converting at different rates.

    Hour 0: control u0-u3 (2 convert), treatment u4-u5 (2 convert); hour 1: nobody; hour 2: control u6-u7
    (none convert), treatment u8-u11 (1 converts). Returns the start of hour 0.
    """
    await make_experiment(client, headers, "greet-test", "greet")
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 4 * HOUR
    plan = [(0, "control", 4, 2), (0, "treatment", 2, 2), (2, "control", 2, 0), (2, "treatment", 4, 1)]
    rows, events, unit = [], [], 0
    for hour, variant, units, converting in plan:
        for i in range(units):
            at = start + hour * HOUR + timedelta(minutes=5 + i)
            rows.append((1, 1, f"u{unit}", variant, at.timestamp()))
            if i < converting:
                stamp = (at + timedelta(minutes=1)).isoformat()
                events.append(
                    {"unit": f"u{unit}", "metric": "converted", "idempotency_key": f"k{unit}", "timestamp": stamp}
                )
            unit += 1
    sessionmaker = runtime_of(client.app).sessionmaker
    async with sessionmaker() as session, session.begin():
        assert (await session.execute(text("SELECT id FROM experiments WHERE key = 'greet-test'"))).scalar_one() == 1
        await IngestRepository(session).insert_exposures_and_queue_units(rows)
    assert (await client.post("/v1/events", json={"events": events}, headers=headers)).json()["accepted"] == 5
    await flush_and_aggregate(client)
    return start


async def check_timeseries(client: Client, headers: dict[str, str]) -> None:
    start = await expose_over_three_hours(client, headers)

    response = await client.get("/v1/experiments/greet-test/results/timeseries", headers=headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["phase"], body["interval"], body["metric"], body["aggregation"]) == (1, "hour", "converted", "any")
    hours = [(start + h * HOUR).isoformat().replace("+00:00", "Z") for h in range(3)]
    series = {s["variant"]: s["points"] for s in body["variants"]}
    assert series == {
        "control": [
            {"at": hours[0], "units": 4, "cumulative_units": 4, "mean": 0.5},
            {"at": hours[1], "units": 0, "cumulative_units": 4, "mean": 0.5},
            {"at": hours[2], "units": 2, "cumulative_units": 6, "mean": pytest.approx(2 / 6)},
        ],
        "treatment": [
            {"at": hours[0], "units": 2, "cumulative_units": 2, "mean": 1.0},
            {"at": hours[1], "units": 0, "cumulative_units": 2, "mean": 1.0},
            {"at": hours[2], "units": 4, "cumulative_units": 6, "mean": pytest.approx(3 / 6)},
        ],
    }
    results = (await client.get("/v1/experiments/greet-test/results", headers=headers)).json()
    last = {v: points[-1] for v, points in series.items()}
    for variant in results["metrics"][0]["variants"]:
        assert last[variant["variant"]]["cumulative_units"] == variant["units"]
        assert last[variant["variant"]]["mean"] == pytest.approx(variant["mean"])

    by_day = (await client.get("/v1/experiments/greet-test/results/timeseries?interval=day", headers=headers)).json()
    assert sum(len(s["points"]) for s in by_day["variants"]) in (2, 4)  # the three hours fall in one day or two


async def test_the_timeseries_on_postgresql(client: Client, setup: dict[str, str]) -> None:
    await check_timeseries(client, setup)


async def test_the_timeseries_on_sqlite(sqlite_settings: Settings) -> None:  # noqa: F811
    headers = await make_key_on(sqlite_settings)
    async with serve_in_process(create_app(sqlite_settings)) as client:
        await make_prompt(client, headers, "greet")
        await make_metric(client, headers, "converted")
        await check_timeseries(client, headers)


async def test_the_timeseries_needs_analyze_and_a_started_phase(
    client: Client, setup: dict[str, str], make_key: KeyFactory
) -> None:
    await make_experiment(client, setup, "draft-test", "greet", start=False)
    not_started = await client.get("/v1/experiments/draft-test/results/timeseries", headers=setup)
    assert not_started.status_code == 409, not_started.text
    reader = await make_key(Scope.READ, name="reader")
    refused = await client.get("/v1/experiments/draft-test/results/timeseries", headers=reader)
    assert problem(refused)["status"] == 403
    bad = await client.get("/v1/experiments/draft-test/results/timeseries?interval=week", headers=setup)
    assert problem(bad)["status"] == 422
