"""The per-variant sums stay exact while events arrive concurrently with the aggregator."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.experiments.repository import StatisticsRepository
from tests.experiments.conftest import Client, flush_and_aggregate, in_app, make_experiment, make_metric, runtime_of


def totals(results: dict[str, Any]) -> dict[tuple[str, str], tuple[int, float]]:
    """(metric, variant) -> (units, sum of per-unit values) as the results report them."""
    return {
        (metric["metric"], row["variant"]): (row["units"], row["mean"] * row["units"])
        for metric in results["metrics"]
        for row in metric["variants"]
    }


async def test_sums_match_a_recomputation_after_concurrent_ingestion(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    await make_metric(client, setup, "spend", kind="continuous", aggregation="sum")
    await make_experiment(client, setup, "greet-test", "greet", guardrail_metrics=["spend"])
    units = [f"user-{i}" for i in range(80)]
    variant = {}
    for unit in units:
        response = await client.post(
            "/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": unit}, headers=setup
        )
        variant[unit] = response.json()["experiment"]["variant"]
    await flush_and_aggregate(client)

    rng = random.Random(5)
    now = datetime.now(UTC).isoformat()
    batches = [
        [
            {
                "unit": rng.choice(units),
                "metric": "spend",
                "value": round(rng.uniform(0, 20), 3),
                "idempotency_key": f"s-{b}-{i}",
                "timestamp": now,
            }
            for i in range(40)
        ]
        + [{"unit": rng.choice(units), "metric": "converted", "idempotency_key": f"c-{b}", "timestamp": now}]
        for b in range(30)
    ]
    aggregator = runtime_of(client.app).experiments.aggregator
    ingesting = True

    async def aggregate_meanwhile() -> int:
        runs = 0
        while ingesting:
            await in_app(client, aggregator.run_once)
            runs += 1
        return runs

    background = asyncio.create_task(aggregate_meanwhile())
    responses = await asyncio.gather(*(client.post("/v1/events", json={"events": b}, headers=setup) for b in batches))
    ingesting = False
    assert await background > 0
    assert all(r.status_code == 200 for r in responses)
    await flush_and_aggregate(client)
    incremental = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()

    expected: dict[tuple[str, str], float] = {}
    converted: dict[str, set[str]] = {}
    for batch in batches:
        for event in batch:
            key = (event["metric"], variant[event["unit"]])
            if event["metric"] == "spend":
                expected[key] = expected.get(key, 0.0) + event["value"]
            else:
                converted.setdefault(variant[event["unit"]], set()).add(event["unit"])
    for (metric, arm), (_, total) in totals(incremental).items():
        if metric == "spend":
            assert total == pytest.approx(expected[(metric, arm)], abs=1e-6)
        else:
            assert round(total) == len(converted.get(arm, ()))

    # Summing the per-unit rows afresh gives the same totals as the running sums.
    async with clean_database.connect() as connection:
        experiment_id = (await connection.execute(text("SELECT id FROM experiments"))).scalar_one()
    await in_app(client, lambda: aggregator.rebuild(experiment_id))
    summed = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    for key, (count, total) in totals(summed).items():
        assert totals(incremental)[key][0] == count
        assert totals(incremental)[key][1] == pytest.approx(total, abs=1e-6)

    # Changing the metrics recomputes every unit from the raw events: the sums must not move.
    await client.patch("/v1/experiments/greet-test", json={"guardrail_metrics": []}, headers=setup)
    await client.patch("/v1/experiments/greet-test", json={"guardrail_metrics": ["spend"]}, headers=setup)
    await flush_and_aggregate(client)
    rebuilt = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    for key, (count, total) in totals(rebuilt).items():
        assert totals(incremental)[key][0] == count
        assert totals(incremental)[key][1] == pytest.approx(total, abs=1e-6)


async def test_batches_larger_than_a_query_chunk_are_folded_in_whole(client: Client, setup: dict[str, str]) -> None:
    """2,500 units: the aggregator's batch (2,000) spans two query chunks, and a second batch follows."""
    await make_experiment(client, setup, "greet-test", "greet")
    units = [f"user-{i}" for i in range(2500)]
    variant = {unit: ("control", "treatment")[i % 3 == 0] for i, unit in enumerate(units)}
    for start in range(0, len(units), 1000):
        exposures = [
            {"experiment": "greet-test", "unit": unit, "variant": variant[unit]} for unit in units[start : start + 1000]
        ]
        assert (await client.post("/v1/exposures", json={"exposures": exposures}, headers=setup)).status_code == 202
    now = datetime.now(UTC).isoformat()
    converted = units[::7]  # in both chunks of the first batch and in the second batch
    events = [{"unit": u, "metric": "converted", "idempotency_key": f"c-{u}", "timestamp": now} for u in converted]
    assert (await client.post("/v1/events", json={"events": events}, headers=setup)).status_code == 200
    await flush_and_aggregate(client)

    def expected(converting: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
        """(metric, variant) -> (units, converted units)."""
        return {
            ("converted", arm): (
                sum(1 for u in units if variant[u] == arm),
                sum(1 for u in converting if variant[u] == arm),
            )
            for arm in ("control", "treatment")
        }

    results = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    assert {k: (n, round(total)) for k, (n, total) in totals(results).items()} == expected(converted)

    # Recomputing units already counted replaces their rows: units are not counted twice.
    later = [u for u in units[1::7] if u not in converted][:600]
    events = [{"unit": u, "metric": "converted", "idempotency_key": f"l-{u}", "timestamp": now} for u in later]
    assert (await client.post("/v1/events", json={"events": events}, headers=setup)).status_code == 200
    await flush_and_aggregate(client)
    results = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    assert {k: (n, round(total)) for k, (n, total) in totals(results).items()} == expected(converted + later)


async def test_derived_rows_are_stored_exactly_as_computed(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Standings and metric values reach the database as the aggregator computed them (one document each)."""
    await make_metric(client, setup, "revenue", kind="continuous")
    await make_experiment(client, setup, "greet-test", "greet", guardrail_metrics=["revenue"])
    odd_unit = 'ünït \t 😀 " \\'
    exposures = [
        {"experiment": "greet-test", "unit": odd_unit, "variant": "control"},
        {"experiment": "greet-test", "unit": "huge", "variant": "treatment"},
        {"experiment": "greet-test", "unit": "both", "variant": "control"},
        {"experiment": "greet-test", "unit": "both", "variant": "treatment"},
    ]
    assert (await client.post("/v1/exposures", json={"exposures": exposures}, headers=setup)).status_code == 202
    await flush_and_aggregate(client)
    now = datetime.now(UTC)
    at, before = now.isoformat(), (now - timedelta(hours=1)).isoformat()
    events = [
        {"unit": odd_unit, "metric": "revenue", "value": 0.1 + 0.2, "idempotency_key": "a", "timestamp": at},
        {"unit": odd_unit, "metric": "revenue", "value": -1e-300, "idempotency_key": "b", "timestamp": before},
        {"unit": "huge", "metric": "revenue", "value": 999_999_999_999_999.9, "idempotency_key": "c", "timestamp": at},
        {"unit": "both", "metric": "converted", "idempotency_key": "d", "timestamp": at},
    ]  # fmt: skip
    assert (await client.post("/v1/events", json={"events": events}, headers=setup)).status_code == 200

    computed: dict[str, list[dict[str, Any]]] = {"standings": [], "values": []}
    insert = StatisticsRepository.insert_unit_rows

    async def recording(self: StatisticsRepository, standings: Any, values: Any) -> None:
        computed["standings"] += standings
        computed["values"] += values
        await insert(self, standings, values)

    monkeypatch.setattr(StatisticsRepository, "insert_unit_rows", recording)
    await flush_and_aggregate(client)

    async with clean_database.connect() as connection:
        standings = (await connection.execute(text("SELECT * FROM experiment_units"))).mappings().all()
        values = (await connection.execute(text("SELECT * FROM unit_metric_values"))).mappings().all()

    def as_set(rows: Any) -> set[tuple[Any, ...]]:
        return {tuple(sorted(dict(row).items())) for row in rows}

    assert as_set(standings) == as_set(computed["standings"])
    assert as_set(values) == as_set(computed["values"])
    assert {row["unit"]: row["variant"] for row in standings} == {
        odd_unit: "control",
        "huge": "treatment",
        "both": None,
    }
    revenue = {(row["unit"], row["value"], row["pre_value"]) for row in values if row["unit"] != "both"}
    assert (odd_unit, 0.1 + 0.2, -1e-300) in revenue
    assert ("huge", 999_999_999_999_999.9, 0.0) in revenue
