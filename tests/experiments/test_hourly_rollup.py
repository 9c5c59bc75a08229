"""The per-hour rollup gives the results over time exactly what grouping the per-unit rows gave.

One scenario on PostgreSQL and SQLite: units first exposed over four hours across a UTC midnight,
some in both variants, metric values that change after the first aggregation, a second phase,
a change of metrics (the aggregator recomputes every unit), a rebuild and an erasure. After each
step the rollup's read (``exposure_timeline``) is compared with the per-unit query it replaced,
for every phase, metric and bucket; values are binary fractions, so every sum is exact whatever
the order it is added in. Last, migration 0008 rebuilds the same rollup from the per-unit rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from registry.app import create_app
from registry.db import migrate
from registry.db.engine import create_engine
from registry.experiments.models import (
    ExperimentHourlyMetricSums,
    ExperimentHourlyUnits,
    ExperimentUnit,
    UnitMetricValue,
)
from registry.experiments.repository import IngestRepository, StatisticsRepository
from registry.settings import Settings
from tests.conftest import RUN_ID, create_database, drop_database, serve_in_process
from tests.embedded import embedded_settings, serve_embedded
from tests.experiments.conftest import (
    Client,
    flush_and_aggregate,
    make_experiment,
    make_metric,
    make_prompt,
    runtime_of,
)

HOUR = timedelta(hours=1)


@pytest.fixture(params=["postgresql", "sqlite"])
async def rollup_settings(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Settings]:
    """A database of the test's own (it is migrated down and up at the end)."""
    name = f"registry_rollup_{RUN_ID}"
    settings = embedded_settings(
        tmp_path, redis_url=None, experiment_exposure_flush_seconds=3600.0, experiment_statistics_seconds=3600.0
    )
    if request.param == "postgresql":
        settings = settings.model_copy(update={"database_url": await create_database(name)})
    engine = create_engine(settings)  # migrated here: tests/completions/test_usage_rollup.py seeds it directly
    await migrate.upgrade(engine)
    await engine.dispose()
    yield settings
    if request.param == "postgresql":
        await drop_database(name)


async def per_unit_timeline(
    session: AsyncSession, experiment_id: int, phase: int, metric_id: int | None, bucket: str
) -> list[tuple[datetime, str, int, int, float]]:
    """The results over time as they were computed before the rollup: the per-unit rows grouped by bucket."""
    repository = StatisticsRepository(session)
    units, values = ExperimentUnit, UnitMetricValue
    at = repository._bucket(units.first_exposed_at, bucket).label("at")
    counted = (
        select(at, units.variant, func.count())
        .where(units.experiment_id == experiment_id, units.phase == phase, units.variant.is_not(None))
        .group_by(at, units.variant)
    )
    found = {(_utc(when), variant): [int(n), 0, 0.0] for when, variant, n in (await session.execute(counted)).all()}
    if metric_id is not None:
        summed = (
            select(at, units.variant, func.count(values.value), func.coalesce(func.sum(values.value), 0.0))
            .join(
                units,
                (units.experiment_id == values.experiment_id)
                & (units.phase == values.phase)
                & (units.unit == values.unit),
            )
            .where(
                values.experiment_id == experiment_id,
                values.phase == phase,
                values.metric_id == metric_id,
                units.variant.is_not(None),
            )
            .group_by(at, units.variant)
        )
        for when, variant, valued, total in (await session.execute(summed)).all():
            row = found.setdefault((_utc(when), variant), [0, 0, 0.0])
            row[1], row[2] = int(valued), float(total)
    return [(when, variant, *row) for (when, variant), row in sorted(found.items())]


def _utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Scenario:
    def __init__(self, client: Client, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers
        self.sessionmaker = runtime_of(client.app).sessionmaker
        # Four hours across a UTC midnight, a day ago: 22:00 and 23:00, then 00:00 and 01:00.
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
        self.start = midnight - 2 * HOUR
        self.events = 0
        self.compared = 0

    async def ids(self) -> tuple[int, list[int]]:
        async with self.sessionmaker() as session:
            experiment = (await session.execute(text("SELECT id FROM experiments WHERE key = 'rollup'"))).scalar_one()
            metrics = (await session.execute(text("SELECT id FROM metrics ORDER BY id"))).scalars().all()
        return int(experiment), [int(m) for m in metrics]

    async def expose(self, phase: int, plan: list[tuple[str, str, int, float]]) -> None:
        """(unit, variant, hour, minute) first exposures, written as the exposure buffer writes them."""
        experiment, _ = await self.ids()
        rows = [
            (experiment, phase, unit, variant, (self.start + hour * HOUR + timedelta(minutes=minute)).timestamp())
            for unit, variant, hour, minute in plan
        ]
        async with self.sessionmaker() as session, session.begin():
            await IngestRepository(session).insert_exposures_and_queue_units(rows)

    async def report(self, metric: str, values: list[tuple[str, int, float]]) -> None:
        """(unit, hour, value) events, at ten minutes to the next hour."""
        events = []
        for unit, hour, value in values:
            self.events += 1
            stamp = (self.start + hour * HOUR + timedelta(minutes=50)).isoformat()
            events.append(
                {
                    "unit": unit,
                    "metric": metric,
                    "idempotency_key": f"e{self.events}",
                    "timestamp": stamp,
                    "value": value,
                }
            )
        response = await self.client.post("/v1/events", json={"events": events}, headers=self.headers)
        assert response.json()["accepted"] == len(events), response.text

    async def check(self, phases: int) -> None:
        """The rollup's read equals the per-unit query for every phase, metric (and none) and bucket."""
        await flush_and_aggregate(self.client)
        experiment, metrics = await self.ids()
        async with self.sessionmaker() as session:
            repository = StatisticsRepository(session)
            for phase in range(1, phases + 1):
                for metric in (None, *metrics):
                    for bucket in ("hour", "day"):
                        expected = await per_unit_timeline(session, experiment, phase, metric, bucket)
                        found = await repository.exposure_timeline(experiment, phase, metric, bucket=bucket)
                        assert found == expected, (phase, metric, bucket)
                        self.compared += sum(1 for row in expected if row[3])

    async def rollup_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """The rollup's rows, but those at zero: the aggregator leaves a row at zero when its units move away."""
        units, sums = ExperimentHourlyUnits, ExperimentHourlyMetricSums
        async with self.sessionmaker() as session:
            kept_units = (await session.execute(select(*units.__table__.c).where(units.units != 0))).all()
            kept_sums = (await session.execute(select(*sums.__table__.c).where(sums.n != 0))).all()
        return {"units": sorted(tuple(row) for row in kept_units), "sums": sorted(tuple(row) for row in kept_sums)}


async def run_scenario(client: Client, headers: dict[str, str]) -> Scenario:
    await make_prompt(client, headers, "greet")
    await make_metric(client, headers, "revenue", "continuous")  # sum: units without events count as 0
    await make_metric(client, headers, "best", "continuous", aggregation="max")  # only units with events count
    await make_metric(client, headers, "converted")
    await make_experiment(
        client, headers, "rollup", "greet", primary_metric="revenue", guardrail_metrics=["best", "converted"]
    )
    scenario = Scenario(client, headers)
    await scenario.expose(
        1,
        [
            ("u1", "control", 0, 5),
            ("u2", "control", 0, 59.99),  # the last moment of the hour
            ("u3", "treatment", 0, 30),
            ("u4", "treatment", 1, 0),  # the first moment of the hour
            ("u5", "control", 1, 45),
            ("u6", "control", 2, 0),  # the first moment of the next UTC day
            ("u7", "treatment", 2, 15),
            ("u8", "control", 3, 20),
            ("u8", "treatment", 3, 40),  # seen in both variants: left out
            ("u9", "treatment", 3, 50),
        ],
    )
    await scenario.report("revenue", [("u1", 0, 2.5), ("u2", 1, 0.25), ("u3", 0, 4.0), ("u6", 2, 1.5), ("u8", 3, 8.0)])
    await scenario.report("best", [("u1", 0, 3.0), ("u4", 1, 0.5), ("u7", 2, 6.25)])
    await scenario.report("converted", [("u2", 1, 1.0), ("u9", 3, 1.0)])
    await scenario.check(phases=1)

    # Values change after the first aggregation: more revenue, a better best, a unit's first conversion,
    # and a unit moves out (seen in the other variant too).
    await scenario.report("revenue", [("u1", 2, 1.25), ("u3", 3, -4.0), ("u5", 2, 0.75)])
    await scenario.report("best", [("u1", 3, 9.5), ("u7", 3, 1.0)])
    await scenario.report("converted", [("u4", 2, 1.0)])
    await scenario.expose(1, [("u9", "control", 3, 55)])
    await scenario.check(phases=1)

    # A second phase (new weights), with some of the same units and a new one.
    response = await client.patch(
        "/v1/experiments/rollup", json={"weights": {"control": 1, "treatment": 3}}, headers=headers
    )
    assert response.status_code == 200, response.text
    await scenario.expose(2, [("u1", "treatment", 3, 10), ("u2", "control", 3, 12), ("u10", "control", 3, 14)])
    await scenario.report("revenue", [("u1", 3, 0.5), ("u10", 3, 16.0)])
    await scenario.check(phases=2)

    # A change of metrics: the experiment's values are forgotten and every unit recomputed.
    response = await client.patch("/v1/experiments/rollup", json={"guardrail_metrics": ["best"]}, headers=headers)
    assert response.status_code == 200, response.text
    await scenario.check(phases=2)
    response = await client.patch(
        "/v1/experiments/rollup", json={"guardrail_metrics": ["best", "converted"]}, headers=headers
    )
    assert response.status_code == 200, response.text
    await scenario.check(phases=2)

    # A rebuild from the per-unit rows, then an erasure (the unit's contribution leaves every hour).
    experiment, _ = await scenario.ids()
    await runtime_of(client.app).experiments.aggregator.rebuild(experiment)
    await scenario.check(phases=2)
    response = await client.delete("/v1/units/u1", headers=headers)
    assert response.status_code == 200, response.text
    await scenario.check(phases=2)
    assert scenario.compared > 20  # buckets with metric values were compared, not only empty series
    return scenario


async def test_the_hourly_rollup_gives_what_the_per_unit_rows_give(rollup_settings: Settings) -> None:
    async with serve_embedded(rollup_settings) as (client, headers):
        scenario = await run_scenario(client, headers)
        kept = await scenario.rollup_rows()
        assert kept["units"]
        assert kept["sums"]

    engine = create_engine(rollup_settings)
    try:
        await migrate.downgrade(engine, "0007")
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    async with serve_in_process(create_app(rollup_settings)) as client:
        assert await Scenario(client, headers).rollup_rows() == kept
