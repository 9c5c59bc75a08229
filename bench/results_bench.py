"""Benchmark: an experiment's results for 1,000,000 units, 2 variants, 3 metrics (target: under 200 ms).

Results are computed from per-variant sufficient statistics, never from raw
events, so their cost does not depend on the number of units. To show it at
scale, this script loads one million units' per-unit rows (what the
aggregator derives from exposures and events) straight into a scratch
PostgreSQL database with COPY, sums them once (``rebuild_sums``), then times
``ExperimentService.results`` (the work behind ``GET /v1/experiments/{key}/results``:
database reads plus statistics) and the statistics alone, as medians of
several runs. It also times the aggregator on a smaller batch of raw facts.

Run: ``make bench-results`` (or ``python bench/results_bench.py``); the numbers are written into
BENCHMARKS.md under "## Experiment results". The PostgreSQL server is REGISTRY_BENCH_POSTGRES_URL
(default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres); the scratch database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import admin, database_url, machine, write_section  # noqa: E402
from registry.auth.principal import Actor  # noqa: E402
from registry.db import migrate  # noqa: E402
from registry.db.engine import create_engine, create_sessionmaker  # noqa: E402
from registry.experiments.aggregator import StatisticsAggregator  # noqa: E402
from registry.experiments.repository import IngestRepository, StatisticsRepository  # noqa: E402
from registry.experiments.results import Analysis, MetricDefinition, PhaseData, build_results  # noqa: E402
from registry.experiments.schemas import CreateExperiment, CreateMetric, VariantIn  # noqa: E402
from registry.experiments.service import ExperimentService, MetricService  # noqa: E402
from registry.experiments.sources import default_sources  # noqa: E402
from registry.prompts.schemas import CreatePromptVersion  # noqa: E402
from registry.prompts.service import PromptLimits, PromptService  # noqa: E402
from registry.settings import Settings  # noqa: E402

ACTOR = Actor(name="bench")
LIMITS = PromptLimits(max_template_chars=100_000)
SECTION = "## Experiment results"


async def define(settings: Settings, key: str) -> int:
    """A prompt ``bench/<key>`` with two versions and a running experiment using CUPED on three metrics."""
    engine = create_engine(settings)
    prompt = f"bench/{key}"
    async with create_sessionmaker(engine)() as session, session.begin():
        prompts = PromptService(session, LIMITS)
        await prompts.create_resource(prompt, "", [], ACTOR)
        for number in (1, 2):
            await prompts.create_version(prompt, CreatePromptVersion(kind="text", template=f"version {number}"), ACTOR)
        metrics = MetricService(session, default_sources())
        if await metrics.repository.get("converted") is None:
            await metrics.create(CreateMetric(key="converted", kind="binomial"), ACTOR)
            await metrics.create(CreateMetric(key="latency", kind="continuous", aggregation="mean"), ACTOR)
            await metrics.create(CreateMetric(key="spend", kind="continuous", aggregation="sum"), ACTOR)
        service = ExperimentService(session, LIMITS)
        await service.create(
            CreateExperiment(
                key=key,
                prompt=prompt,
                variants=[VariantIn(key="control", prompt_version=1), VariantIn(key="treatment", prompt_version=2)],
                primary_metric="converted",
                guardrail_metrics=["latency", "spend"],
                cuped=True,
            ),
            ACTOR,
        )
        experiment = await service.start(key, ACTOR)
        experiment_id = experiment.id
    await engine.dispose()
    return experiment_id


async def load_units(engine: AsyncEngine, experiment_id: int, units: int, metric_ids: dict[str, int]) -> None:
    """COPY the per-unit rows of ``units`` units: standing, conversion, mean latency, summed spend (with pre)."""
    rng = np.random.default_rng(1)
    treatment = rng.random(units) < 0.5
    variant = np.where(treatment, "treatment", "control")
    exposed = datetime.now(UTC) - timedelta(days=1)
    names = [f"unit-{i:07d}" for i in range(units)]
    converted = rng.random(units) < np.where(treatment, 0.11, 0.10)
    has_latency = rng.random(units) < 0.7
    latency = rng.normal(800, 200, units)
    pre_spend = rng.exponential(10, units)
    spend = 0.6 * pre_spend + rng.exponential(np.where(treatment, 4.2, 4.0))
    unit_rows = [(experiment_id, 1, names[i], variant[i], exposed) for i in range(units)]
    value_rows: list[tuple[Any, ...]] = []
    for i in range(units):
        if converted[i]:
            value_rows.append((experiment_id, 1, metric_ids["converted"], names[i], variant[i], 1.0, 0.0))
        if has_latency[i]:
            value_rows.append((experiment_id, 1, metric_ids["latency"], names[i], variant[i], float(latency[i]), 0.0))
        value_rows.append(
            (experiment_id, 1, metric_ids["spend"], names[i], variant[i], float(spend[i]), float(pre_spend[i]))
        )
    async with engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        assert raw is not None
        await raw.copy_records_to_table(
            "experiment_units",
            records=unit_rows,
            columns=["experiment_id", "phase", "unit", "variant", "first_exposed_at"],
        )
        await raw.copy_records_to_table(
            "unit_metric_values",
            records=value_rows,
            columns=["experiment_id", "phase", "metric_id", "unit", "variant", "value", "pre_value"],
        )
        await connection.commit()
        # What autovacuum does after a bulk load: without statistics the planner scans instead of using indexes.
        await connection.execute(text("ANALYZE experiment_units"))
        await connection.execute(text("ANALYZE unit_metric_values"))
        await connection.commit()


async def median_ms(work: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, list[float]]:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        await work()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings), timings


async def aggregator_throughput(settings: Settings, units: int) -> float:
    """Units per second the aggregator folds in from raw exposures and events (3 events per unit)."""
    experiment_id = await define(settings, "bench-aggregator")
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    now = datetime.now(UTC)
    async with sessionmaker() as session, session.begin():
        metric_ids = {k: v for k, v in (await session.execute(text("SELECT key, id FROM metrics"))).all()}
        ingest = IngestRepository(session)
        names = [f"agg-{i}" for i in range(units)]
        await ingest.insert_exposures_and_queue_units(
            [(experiment_id, 1, u, ("control", "treatment")[i % 2], now.timestamp()) for i, u in enumerate(names)]
        )
        await ingest.insert_events(
            [
                {
                    "idempotency_key": f"{m}-{u}",
                    "unit": u,
                    "metric_id": metric_ids[m],
                    "value": 1.0,
                    "occurred_at": now,
                    "received_at": now,
                    "experiment_id": None,
                }
                for u in names
                for m in ("converted", "latency", "spend")
            ]
        )
    aggregator = StatisticsAggregator(
        sessionmaker, default_sources(), batch_size=2000, grace=timedelta(seconds=60), time_budget=3600
    )
    started = time.perf_counter()
    done = await aggregator.drain()
    elapsed = time.perf_counter() - started
    await engine.dispose()
    assert done == units
    return units / elapsed


async def run(units: int, runs: int, aggregator_units: int, output: Path | None) -> None:
    name = f"registry_bench_{uuid.uuid4().hex[:8]}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(database_url=database_url(name), log_level="WARNING", database_statement_timeout_ms=0)
        engine = create_engine(settings)
        await migrate.upgrade(engine)
        experiment_id = await define(settings, "bench-results")
        async with engine.connect() as connection:
            metric_ids = {k: v for k, v in (await connection.execute(text("SELECT key, id FROM metrics"))).all()}
            version = (await connection.execute(text("SHOW server_version"))).scalar_one()

        started = time.perf_counter()
        await load_units(engine, experiment_id, units, metric_ids)
        load_s = time.perf_counter() - started
        sessionmaker = create_sessionmaker(engine)
        started = time.perf_counter()
        async with sessionmaker() as session, session.begin():
            await StatisticsRepository(session).rebuild_sums(experiment_id)
        sums_s = time.perf_counter() - started

        async def results() -> Any:
            async with sessionmaker() as session:
                return await ExperimentService(session, LIMITS).results("bench-results", None)

        first = await results()
        assert first.units == units, first.units
        assert [m.metric for m in first.metrics] == ["converted", "latency", "spend"]
        service_ms, service_runs = await median_ms(results, runs)

        async with sessionmaker() as session:
            repository = StatisticsRepository(session)
            data = PhaseData(
                experiment="bench-results",
                phase=1,
                status="running",
                variants=["control", "treatment"],
                weights=[0.5, 0.5],
                units=await repository.variant_counts(experiment_id, 1),
                units_in_multiple_variants=0,
                pending_units=0,
                metrics=[
                    MetricDefinition(metric_ids["converted"], "converted", "primary", "binomial", "any", "higher"),
                    MetricDefinition(metric_ids["latency"], "latency", "guardrail", "continuous", "mean", "higher"),
                    MetricDefinition(metric_ids["spend"], "spend", "guardrail", "continuous", "sum", "higher"),
                ],
                sums=await repository.metric_sums(experiment_id, 1),
            )
        analysis = Analysis(alpha=0.05, correction="holm", sequential=True, sequential_tuning=5000.0, cuped=True)

        async def pure() -> Any:
            return build_results(data, analysis, datetime.now(UTC))

        stats_ms, _ = await median_ms(pure, runs)
        await engine.dispose()
        throughput = await aggregator_throughput(settings, aggregator_units)

        spend = first.metrics[2].variants[1].vs_control
        theta = f"{spend.cuped_theta:.4f}" if spend is not None and spend.cuped_theta is not None else "n/a"
        body = "\n".join(
            [
                SECTION,
                "",
                f"`GET /v1/experiments/{{key}}/results` work (database reads + statistics) for {units:,} units, "
                f"2 variants, 3 metrics (a conversion, a mean, a sum), CUPED and sequential intervals on: "
                f"**median {service_ms:.1f} ms** over {runs} runs (target: under 200 ms; "
                f"min {min(service_runs):.1f}, max {max(service_runs):.1f}). The statistics alone: "
                f"median {stats_ms:.2f} ms.",
                "",
                "Results read the per-variant sufficient statistics (a few rows per metric and variant), so "
                "their cost does not grow with the number of units. Setting up: loading the per-unit rows "
                f"(COPY) took {load_s:.1f} s and summing them once (`rebuild_sums`) {sums_s:.1f} s. "
                f"The aggregator folded raw facts (1 exposure and 3 events per unit) into the statistics at "
                f"{throughput:,.0f} units/s ({aggregator_units:,} units, batches of 2,000).",
                "",
                f"- command: `make bench-results` (`python bench/results_bench.py --units {units} --runs {runs}`)",
                f"- machine: {machine()}; PostgreSQL {version} on the same machine",
                f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; CUPED theta on spend: {theta}",
                "",
            ]
        )
        print(body)
        if output is not None:
            write_section(SECTION, body, output)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--aggregator-units", type=int, default=20_000)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="Markdown file to update.")
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args()
    asyncio.run(run(args.units, args.runs, args.aggregator_units, None if args.no_write else args.output))


if __name__ == "__main__":
    main()
