"""Completion metrics in experiments: errors, latency quantiles and ratios per variant, from real completions.

The variants run against the stand-in backend (``tests/completions/fault_server.py``), whose model
names script failures and delays; the registry measures and records every completion, and the
results must show what those records say. Assertions compare recorded numbers and relations
between variants, never latencies with fixed bounds.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.console import formatting
from registry.experiments.models import ExperimentMetricHistogram
from registry.settings import Settings
from registry.stats.quantiles import ACCURACY
from tests.completions.conftest import backend, publish, unique
from tests.conftest import problem
from tests.embedded import embedded_settings, serve_embedded
from tests.experiments.conftest import Client, in_app, make_prompt, runtime_of, settle

UNITS = [f"user-{i}" for i in range(90)]
STEADY_ERRORS, ERRING_ERRORS = 2, 16


def stand_ins(fault: str) -> dict[str, Any]:
    """A stand-in backend per variant, without retries and with a breaker that never opens here:
    a scripted failure is exactly one failed completion."""
    stand_in = backend(fault, max_retries=0, breaker_failures=1000)
    return {
        "backends": {"steady": stand_in, "erring": stand_in, "slow": stand_in},
        "completion_usage_flush_seconds": 3600.0,
    }


@pytest.fixture
def settings(settings: Settings, fault: str) -> Settings:
    return settings.model_copy(update=stand_ins(fault))


async def created(response: Any) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def make_completion_metrics(client: Client, headers: dict[str, str]) -> None:
    metrics: list[dict[str, Any]] = [
        {"key": "failed", "kind": "binomial", "source_field": "error"},
        {"key": "errors_per_completion", "kind": "ratio", "source_field": "error", "denominator_field": "completions"},
        {"key": "cost_per_completion", "kind": "ratio", "source_field": "cost", "denominator_field": "completions"},
        {"key": "latency_p50", "kind": "quantile", "quantile": 0.5, "source_field": "latency_ms"},
        {"key": "latency_p95", "kind": "quantile", "quantile": 0.95, "source_field": "latency_ms"},
    ]
    for metric in metrics:
        await created(
            await client.post(
                "/v1/metrics", json={"source": "completions", "direction": "lower", **metric}, headers=headers
            )
        )


async def fold_in(client: Client) -> None:
    """Exposures first and aggregated, then the completions: only their own queueing brings them in."""
    runtime = runtime_of(client.app)

    async def work() -> None:
        await runtime.experiments.exposures.flush()
        await runtime.experiments.aggregator.drain()
        await runtime.completions.recorder.flush()
        await runtime.experiments.aggregator.drain()

    await in_app(client, work)


@pytest.fixture
async def guarded(client: Client, admin: dict[str, str]) -> dict[str, Any]:
    return await run_guarded(client, admin)


async def run_guarded(client: Client, headers: dict[str, str]) -> dict[str, Any]:
    """Experiment 'guard' on prompt 'greet': c (2 scripted failures), t (16), u (every answer 0.2 to 0.295 s late).

    Returns the results by metric and variant.
    """
    steady, erring, slow = (
        unique(f"status:500:{STEADY_ERRORS}"),
        unique(f"status:500:{ERRING_ERRORS}"),
        unique("slow-headers:0.2:0.005"),  # 0.2 to 0.295 s: the p50 has bounds apart
    )
    await publish(client, headers, backend="steady", model=steady, config="steady", prices=(1000.0, 2000.0))
    await publish(
        client, headers, backend="erring", model=erring, config="erring", prompt=None, prices=(1000.0, 2000.0)
    )
    await publish(client, headers, backend="slow", model=slow, config="slow", prompt=None, prices=(1000.0, 4000.0))
    await make_completion_metrics(client, headers)
    experiment = {
        "key": "guard",
        "prompt": "greet",
        "variants": [
            {"key": "c", "prompt_version": 1, "config": {"name": "steady", "version": 1}},
            {"key": "t", "prompt_version": 1, "config": {"name": "erring", "version": 1}},
            {"key": "u", "prompt_version": 1, "config": {"name": "slow", "version": 1}},
        ],
        "primary_metric": "failed",
        "guardrail_metrics": ["errors_per_completion", "cost_per_completion", "latency_p50", "latency_p95"],
    }
    await created(await client.post("/v1/experiments", json=experiment, headers=headers))
    await created(await client.post("/v1/experiments/guard/start", headers=headers))
    await settle(client)
    # Ten at a time: a third of them wait 0.2 s or more on the slow backend, which one at a time took 8 s.
    for start in range(0, len(UNITS), 10):
        await asyncio.gather(
            *(
                client.post(
                    "/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}, "unit": unit}, headers=headers
                )
                for unit in UNITS[start : start + 10]
            )
        )
    await fold_in(client)
    results = await created(await client.get("/v1/experiments/guard/results", headers=headers))
    return {m["metric"]: {v["variant"]: v for v in m["variants"]} for m in results["metrics"]}


async def recorded(engine: AsyncEngine) -> dict[str, list[tuple[str, float | None, float]]]:
    """The completions the registry recorded, per variant: (status, latency, cost)."""
    by_variant: dict[str, list[tuple[str, float | None, float]]] = defaultdict(list)
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT variant, status, latency_ms, cost FROM completions WHERE experiment_key = 'guard'")
        )
        for variant, status, latency, cost in rows:
            by_variant[variant].append((status, latency, cost))
    return by_variant


async def test_error_metrics_count_each_variants_failed_completions(
    guarded: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    completions = await recorded(admin_engine)
    errors = {v: sum(status == "error" for status, _, _ in rows) for v, rows in completions.items()}
    assert errors == {"c": STEADY_ERRORS, "t": ERRING_ERRORS, "u": 0}
    assert sum(len(rows) for rows in completions.values()) == len(UNITS)

    failed, per_completion = guarded["failed"], guarded["errors_per_completion"]
    for variant, rows in completions.items():
        assert failed[variant]["units"] == len(rows)  # one completion per unit
        assert failed[variant]["mean"] == pytest.approx(errors[variant] / len(rows))
        assert per_completion[variant]["units"] == len(rows)
        assert per_completion[variant]["mean"] == pytest.approx(errors[variant] / len(rows))
    t_vs_c = per_completion["t"]["vs_control"]
    assert t_vs_c["absolute"]["estimate"] == pytest.approx(
        ERRING_ERRORS / len(completions["t"]) - STEADY_ERRORS / len(completions["c"])
    )
    assert t_vs_c["absolute"]["ci_low"] > 0
    assert t_vs_c["chance_to_beat_control"] < 0.5  # lower is better: t is worse
    assert failed["t"]["vs_control"]["p_value"] < 0.01


async def test_cost_per_completion_is_the_recorded_cost_over_the_completions(
    guarded: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    completions = await recorded(admin_engine)
    cost = guarded["cost_per_completion"]
    for variant, rows in completions.items():
        assert cost[variant]["mean"] == pytest.approx(sum(c for _, _, c in rows) / len(rows), rel=1e-9)
    assert cost["u"]["mean"] > cost["c"]["mean"]  # the slow config's output tokens cost twice as much


async def test_latency_quantiles_show_the_slower_variant(guarded: dict[str, Any], admin_engine: AsyncEngine) -> None:
    completions = await recorded(admin_engine)
    p50, p95 = guarded["latency_p50"], guarded["latency_p95"]
    for variant, rows in completions.items():
        latencies = np.array([latency for _, latency, _ in rows if latency is not None])
        assert p50[variant]["units"] == len(latencies)
        exact = float(np.quantile(latencies, 0.5, method="inverted_cdf"))
        assert p50[variant]["mean"] == pytest.approx(exact, rel=ACCURACY)
        assert p50[variant]["ci_low"] <= p50[variant]["mean"] <= p50[variant]["ci_high"]
        exact_p95 = float(np.quantile(latencies, 0.95, method="inverted_cdf"))
        assert p95[variant]["mean"] == pytest.approx(exact_p95, rel=ACCURACY)

    assert p95["u"]["mean"] > p95["c"]["mean"]
    slower = p50["u"]["vs_control"]
    assert slower["absolute"]["estimate"] > 0
    assert slower["absolute"]["ci_low"] > 0
    assert slower["chance_to_beat_control"] < 0.05
    # About 30 units per variant cannot bound a p95 (gbstats: n must exceed z^2 nu / (1 - nu), about 73).
    assert p95["u"]["vs_control"] is None
    assert p95["u"]["note"]


async def test_the_histograms_kept_by_differences_equal_a_rebuild(
    client: Client, guarded: dict[str, Any], admin_engine: AsyncEngine
) -> None:
    table = ExperimentMetricHistogram.__tablename__
    query = text(f"SELECT variant, metric_id, bucket, units FROM {table} WHERE units != 0 ORDER BY 1, 2, 3")

    async def histograms() -> list[tuple[Any, ...]]:
        async with admin_engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(query)]

    kept = await histograms()
    assert sum(units for *_, units in kept) == 2 * len(UNITS)  # two quantile metrics, every unit has a latency
    runtime = runtime_of(client.app)
    async with admin_engine.connect() as connection:
        experiment_id = (await connection.execute(text("SELECT id FROM experiments WHERE key = 'guard'"))).scalar_one()
    await in_app(client, lambda: runtime.experiments.aggregator.rebuild(experiment_id))
    assert await histograms() == kept


async def test_a_unit_erased_leaves_the_quantile_histograms(
    client: Client, guarded: dict[str, Any], admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    before = guarded["latency_p50"]
    assert (await client.delete(f"/v1/units/{UNITS[0]}", headers=admin)).status_code == 200
    results = await created(await client.get("/v1/experiments/guard/results", headers=admin))
    after = {v["variant"]: v for m in results["metrics"] if m["metric"] == "latency_p50" for v in m["variants"]}
    assert sum(v["units"] for v in after.values()) == sum(v["units"] for v in before.values()) - 1


# ------------------------------------------------------------------ creating the metrics: what is refused


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "ratio", "source_field": "error"}, "denominator_field"),
        ({"kind": "ratio", "denominator_field": "completions"}, "source_field"),
        ({"kind": "ratio", "source_field": "error", "denominator_field": "nope"}, "denominator_field"),
        (
            {"kind": "ratio", "source_field": "error", "denominator_field": "completions", "aggregation": "mean"},
            "aggregation",
        ),
        ({"kind": "quantile", "source_field": "latency_ms"}, "quantile"),
        ({"kind": "quantile", "source_field": "latency_ms", "quantile": 1.0}, "quantile"),
        ({"kind": "quantile", "source_field": "latency_ms", "quantile": 0.0}, "quantile"),
        ({"kind": "quantile", "source_field": "latency_ms", "quantile": 0.9, "aggregation": "sum"}, "aggregation"),
        ({"kind": "continuous", "source_field": "cost", "quantile": 0.5}, "quantile"),
        ({"kind": "continuous", "source_field": "cost", "denominator_field": "completions"}, "denominator_field"),
        ({"kind": "continuous", "source_field": "latency"}, "source_field"),
        ({"kind": "continuous"}, "source_field"),
    ],
    ids=[
        "ratio-without-denominator",
        "ratio-without-numerator",
        "ratio-unknown-denominator",
        "ratio-not-summed",
        "quantile-without-level",
        "quantile-of-one",
        "quantile-of-zero",
        "quantile-summed",
        "quantile-level-on-a-mean",
        "denominator-on-a-mean",
        "unknown-completion-field",
        "completions-need-a-field",
    ],
)
async def test_invalid_completion_metrics_are_refused_naming_the_field(
    client: Client, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/metrics", json={"key": "m", "source": "completions", **body}, headers=admin)
    assert response.status_code == 422, response.text
    assert field in {error["field"] for error in problem(response)["errors"]}
    assert (await client.get("/v1/metrics/m", headers=admin)).status_code == 404


async def test_a_ratio_of_events_is_refused_events_have_no_fields(client: Client, admin: dict[str, str]) -> None:
    body = {"key": "m", "kind": "ratio", "source_field": "x", "denominator_field": "y"}
    response = await client.post("/v1/metrics", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert {"source_field", "denominator_field"} <= {error["field"] for error in problem(response)["errors"]}


async def test_completion_metrics_read_back_as_created(client: Client, admin: dict[str, str]) -> None:
    await make_prompt(client, admin, "unused")
    await make_completion_metrics(client, admin)
    ratio = await created(await client.get("/v1/metrics/errors_per_completion", headers=admin))
    quantile = await created(await client.get("/v1/metrics/latency_p95", headers=admin))
    assert (
        ratio["kind"],
        ratio["source"],
        ratio["source_field"],
        ratio["denominator_field"],
        ratio["aggregation"],
    ) == (
        "ratio",
        "completions",
        "error",
        "completions",
        "sum",
    )
    assert (quantile["kind"], quantile["quantile"], quantile["aggregation"]) == ("quantile", 0.95, "mean")


async def test_the_console_results_page_shows_the_completion_metrics(
    client: Client, guarded: dict[str, Any], admin: dict[str, str]
) -> None:
    form = await client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', form.text)
    assert csrf is not None
    key = admin["Authorization"].removeprefix("Bearer ")
    signed = await client.post("/console/login", data={"api_key": key, "csrf": csrf.group(1), "next": ""})
    assert signed.status_code == 303, signed.text

    page = await client.get("/console/experiments/guard")

    assert page.status_code == 200, page.text
    for metric in ("errors_per_completion", "cost_per_completion", "latency_p50", "latency_p95"):
        assert metric in page.text
    headers = re.findall(r'<th scope="col" class="num">(Ratio|p50|p95|Mean)</th>', page.text)
    assert headers == ["Mean", "Ratio", "Ratio", "p50", "p95"]  # the primary metric first, then the guardrails
    assert formatting.estimate(guarded["latency_p50"]["u"]["mean"]) in page.text


async def test_a_ratio_primary_metric_has_no_curve_over_time_only_units(
    client: Client, guarded: dict[str, Any], admin: dict[str, str]
) -> None:
    metrics = {"primary_metric": "errors_per_completion", "guardrail_metrics": ["failed", "latency_p50"]}
    changed = await client.patch("/v1/experiments/guard", json=metrics, headers=admin)
    assert changed.status_code == 200, changed.text
    await fold_in(client)

    series = await created(await client.get("/v1/experiments/guard/results/timeseries", headers=admin))

    assert series["metric"] == "errors_per_completion"
    points = [p for v in series["variants"] for p in v["points"]]
    assert sum(p["units"] for p in points) == len(UNITS)
    assert all(p["mean"] is None for p in points)


async def test_completion_metrics_on_the_embedded_default(tmp_path: Path, fault: str) -> None:
    """SQLite: the source, the queueing at flush, the histograms and the results, as on PostgreSQL."""
    settings = embedded_settings(
        tmp_path,
        experiment_exposure_flush_seconds=3600.0,
        experiment_statistics_seconds=3600.0,
        **stand_ins(fault),
    )
    async with serve_embedded(settings) as (client, admin):
        results = await run_guarded(client, admin)
        completions = await recorded(runtime_of(client.app).engine)

    errors = {v: sum(status == "error" for status, _, _ in rows) for v, rows in completions.items()}
    assert errors == {"c": STEADY_ERRORS, "t": ERRING_ERRORS, "u": 0}
    for variant, rows in completions.items():
        assert results["errors_per_completion"][variant]["mean"] == pytest.approx(errors[variant] / len(rows))
        latencies = [latency for _, latency, _ in rows if latency is not None]
        exact = float(np.quantile(latencies, 0.5, method="inverted_cdf"))
        assert results["latency_p50"][variant]["mean"] == pytest.approx(exact, rel=ACCURACY)
    assert results["latency_p50"]["u"]["vs_control"]["absolute"]["ci_low"] > 0


async def test_the_export_has_a_ratios_numerator_and_denominator_per_unit(
    client: Client, guarded: dict[str, Any], admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    response = await client.get("/v1/experiments/guard/export", params={"format": "csv"}, headers=admin)
    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.text)))

    assert "errors_per_completion.denominator" in rows[0]
    assert "latency_p50.denominator" not in rows[0]
    completions = await recorded(admin_engine)
    for variant, recorded_rows in completions.items():
        mine = [r for r in rows if r["variant"] == variant]
        assert sum(float(r["errors_per_completion"]) for r in mine) == sum(s == "error" for s, _, _ in recorded_rows)
        assert sum(float(r["errors_per_completion.denominator"]) for r in mine) == len(recorded_rows)
