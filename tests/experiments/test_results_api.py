"""Results from exposures and events through the whole pipeline, checked against scipy on the raw data."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats

from tests.experiments.conftest import Client, flush_and_aggregate, make_experiment, make_metric

TOLERANCE = 1e-9
UNITS = [f"user-{i}" for i in range(240)]


async def post_events(client: Client, headers: dict[str, str], events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 1000):
        response = await client.post("/v1/events", json={"events": events[start : start + 1000]}, headers=headers)
        assert response.status_code == 200, response.text


def at(moment: datetime) -> str:
    return moment.isoformat()


@pytest.fixture
async def experiment(client: Client, setup: dict[str, str]) -> dict[str, Any]:
    """An experiment on 240 units with a conversion, a mean latency and a summed spend, plus pre-exposure spend.

    Returns the per-unit values the analysis should see, computed here from the raw events.
    """
    await make_metric(client, setup, "latency", kind="continuous", aggregation="mean", direction="lower")
    await make_metric(client, setup, "spend", kind="continuous", aggregation="sum")
    await make_experiment(client, setup, "greet-test", "greet", guardrail_metrics=["latency", "spend"], cuped=True)
    variant: dict[str, str] = {}
    for unit in UNITS:
        response = await client.post(
            "/v1/prompts/greet/render", json={"variables": {"x": "hi"}, "unit": unit}, headers=setup
        )
        variant[unit] = response.json()["experiment"]["variant"]
    rng = np.random.default_rng(3)
    now = datetime.now(UTC)
    before = now - timedelta(days=2)
    events: list[dict[str, Any]] = []
    values: dict[str, dict[str, float | None]] = {}
    for i, unit in enumerate(UNITS):
        lift = 1.3 if variant[unit] == "treatment" else 1.0
        converted = bool(rng.random() < 0.3 * lift)
        latencies = list(rng.normal(200, 40, size=int(rng.integers(0, 3))))
        spends = list(rng.exponential(10 * lift, size=int(rng.integers(0, 4))))
        pre_spend = float(rng.exponential(10))
        common = {"unit": unit, "timestamp": at(now)}
        if converted:
            events.append({**common, "metric": "converted", "idempotency_key": f"c-{i}"})
        events += [
            {**common, "metric": "latency", "value": v, "idempotency_key": f"l-{i}-{j}"}
            for j, v in enumerate(latencies)
        ]
        events += [
            {**common, "metric": "spend", "value": v, "idempotency_key": f"s-{i}-{j}"} for j, v in enumerate(spends)
        ]
        events.append(
            {
                "unit": unit,
                "metric": "spend",
                "value": pre_spend,
                "idempotency_key": f"pre-{i}",
                "timestamp": at(before),
            }
        )
        values[unit] = {
            "converted": float(converted),
            "latency": float(np.mean(latencies)) if latencies else None,
            "spend": float(sum(spends)),
            "spend_pre": pre_spend,
        }
    await post_events(client, setup, events)
    return {"variant": variant, "values": values}


def per_unit(experiment: dict[str, Any], metric: str, variant: str) -> np.ndarray:
    values = [
        v[metric]
        for unit, v in experiment["values"].items()
        if experiment["variant"][unit] == variant and v[metric] is not None
    ]
    return np.array(values, dtype=float)


async def test_results_match_scipy_on_the_per_unit_values(
    client: Client, setup: dict[str, str], experiment: dict[str, Any]
) -> None:
    await flush_and_aggregate(client)
    response = await client.get("/v1/experiments/greet-test/results", headers=setup)
    assert response.status_code == 200, response.text
    results = response.json()
    counts = {v: sum(1 for x in experiment["variant"].values() if x == v) for v in ("control", "treatment")}
    assert results["units"] == len(UNITS)
    assert results["pending_units"] == 0
    assert {v["variant"]: v["units"] for v in results["variants"]} == counts
    assert results["srm"]["flagged"] is False
    assert results["srm"]["p_value"] == pytest.approx(
        scipy_stats.chisquare([counts["control"], counts["treatment"]]).pvalue, abs=TOLERANCE
    )
    by_metric = {m["metric"]: m for m in results["metrics"]}
    assert [m["role"] for m in results["metrics"]] == ["primary", "guardrail", "guardrail"]
    for key in ("converted", "latency"):
        control, treatment = per_unit(experiment, key, "control"), per_unit(experiment, key, "treatment")
        rows = {row["variant"]: row for row in by_metric[key]["variants"]}
        assert rows["control"]["units"] == len(control)
        assert rows["control"]["mean"] == pytest.approx(control.mean(), abs=TOLERANCE)
        assert rows["treatment"]["mean"] == pytest.approx(treatment.mean(), abs=TOLERANCE)
        if key == "latency":
            assert rows["control"]["std_dev"] == pytest.approx(control.std(ddof=1), abs=TOLERANCE)
            expected = scipy_stats.ttest_ind(treatment, control, equal_var=False)
            assert rows["treatment"]["vs_control"]["p_value"] == pytest.approx(expected.pvalue, abs=TOLERANCE)
        assert rows["control"]["vs_control"] is None
    # CUPED on spend: Welch on post - theta * pre, theta pooled over both variants.
    post = {v: per_unit(experiment, "spend", v) for v in ("control", "treatment")}
    pre = {v: per_unit(experiment, "spend_pre", v) for v in ("control", "treatment")}
    all_post, all_pre = np.concatenate(list(post.values())), np.concatenate(list(pre.values()))
    theta = np.cov(all_post, all_pre, ddof=1)[0, 1] / all_pre.var(ddof=1)
    expected = scipy_stats.ttest_ind(
        post["treatment"] - theta * pre["treatment"], post["control"] - theta * pre["control"], equal_var=False
    )
    spend = {row["variant"]: row for row in by_metric["spend"]["variants"]}["treatment"]["vs_control"]
    assert spend["cuped_theta"] == pytest.approx(theta, abs=TOLERANCE)
    assert spend["p_value"] == pytest.approx(expected.pvalue, abs=TOLERANCE)
    adjusted = sorted(
        row["vs_control"]["p_value_adjusted"] for m in results["metrics"] for row in m["variants"] if row["vs_control"]
    )
    raw = sorted(row["vs_control"]["p_value"] for m in results["metrics"] for row in m["variants"] if row["vs_control"])
    assert adjusted[0] == pytest.approx(min(1.0, raw[0] * 3), abs=TOLERANCE)


async def test_results_have_the_documented_shape(
    client: Client, setup: dict[str, str], experiment: dict[str, Any]
) -> None:
    await client.patch(
        "/v1/experiments/greet-test", json={"sequential": True, "correction": "benjamini-hochberg"}, headers=setup
    )
    await flush_and_aggregate(client)
    results = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    assert set(results) == {
        "experiment",
        "phase",
        "status",
        "alpha",
        "correction",
        "sequential",
        "cuped",
        "units",
        "units_in_multiple_variants",
        "pending_units",
        "variants",
        "srm",
        "metrics",
        "computed_at",
    }
    assert results["correction"] == "benjamini-hochberg"
    treatment = results["metrics"][0]["variants"][1]
    assert set(treatment) == {"variant", "units", "mean", "std_dev", "ci_low", "ci_high", "vs_control", "note"}
    comparison = treatment["vs_control"]
    assert set(comparison) == {
        "absolute",
        "relative",
        "p_value",
        "p_value_adjusted",
        "significant",
        "chance_to_beat_control",
        "credible_interval",
        "dof",
        "sequential",
        "cuped_theta",
    }
    assert set(comparison["absolute"]) == {"estimate", "std_error", "ci_low", "ci_high", "p_value"}
    assert comparison["sequential"]["absolute"]["ci_low"] < comparison["absolute"]["ci_low"]
    assert 0 <= comparison["chance_to_beat_control"] <= 1


async def test_units_seen_in_two_variants_are_counted_and_left_out(
    client: Client, setup: dict[str, str], experiment: dict[str, Any]
) -> None:
    unit = UNITS[0]
    other = "control" if experiment["variant"][unit] == "treatment" else "treatment"
    response = await client.post(
        "/v1/exposures",
        json={"exposures": [{"experiment": "greet-test", "unit": unit, "variant": other}]},
        headers=setup,
    )
    assert response.status_code == 202
    await flush_and_aggregate(client)
    results = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    assert results["units_in_multiple_variants"] == 1
    assert results["units"] == len(UNITS) - 1
    definition = (await client.get("/v1/experiments/greet-test", headers=setup)).json()
    assert definition["phases"][0]["units_in_multiple_variants"] == 1


async def test_statistics_wait_for_the_aggregator(
    client: Client, setup: dict[str, str], experiment: dict[str, Any]
) -> None:
    await flush_and_aggregate(client)
    late = [
        {
            "unit": UNITS[1],
            "metric": "spend",
            "value": 5.0,
            "idempotency_key": "late",
            "timestamp": at(datetime.now(UTC)),
        }
    ]
    await post_events(client, setup, late)
    pending = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    assert pending["pending_units"] == 1
    await flush_and_aggregate(client)
    done = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    assert done["pending_units"] == 0


async def test_results_of_a_draft_or_an_unknown_phase(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "draft", "greet", start=False)
    assert (await client.get("/v1/experiments/draft/results", headers=setup)).status_code == 409
    await client.post("/v1/experiments/draft/start", headers=setup)
    assert (await client.get("/v1/experiments/draft/results", params={"phase": 2}, headers=setup)).status_code == 404
    assert (await client.get("/v1/experiments/nope/results", headers=setup)).status_code == 404


async def test_export_streams_one_row_per_unit_as_csv_and_parquet(
    client: Client, setup: dict[str, str], experiment: dict[str, Any]
) -> None:
    await flush_and_aggregate(client)
    response = await client.get("/v1/experiments/greet-test/export", params={"format": "csv"}, headers=setup)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "greet-test-phase1.csv" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == len(UNITS)
    assert list(rows[0]) == ["unit", "variant", "first_exposed_at", "in_analysis", "converted", "latency", "spend"]
    row = next(r for r in rows if r["unit"] == UNITS[5])
    expected = experiment["values"][UNITS[5]]
    assert row["variant"] == experiment["variant"][UNITS[5]]
    assert float(row["converted"]) == expected["converted"]
    assert float(row["spend"]) == pytest.approx(expected["spend"], abs=TOLERANCE)
    assert row["latency"] == ("" if expected["latency"] is None else row["latency"])

    parquet = await client.get("/v1/experiments/greet-test/export", params={"format": "parquet"}, headers=setup)
    assert parquet.status_code == 200
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == len(UNITS)
    assert table.column_names == ["unit", "variant", "first_exposed_at", "in_analysis", "converted", "latency", "spend"]
    assert sorted(table.column("unit").to_pylist()) == sorted(UNITS)


async def test_export_filters_by_first_exposure_time(
    client: Client, setup: dict[str, str], experiment: dict[str, Any]
) -> None:
    await flush_and_aggregate(client)
    future = at(datetime.now(UTC) + timedelta(minutes=1))
    later = await client.get("/v1/experiments/greet-test/export", params={"exposed_from": future}, headers=setup)
    assert later.text.strip().count("\n") == 0
    earlier = await client.get("/v1/experiments/greet-test/export", params={"exposed_to": future}, headers=setup)
    assert earlier.text.strip().count("\n") == len(UNITS)
