"""Keeps the per-variant sufficient statistics up to date from raw exposures and events.

Why a queue and a job, rather than updating the sums in each event's transaction:

- A unit's value depends on its exposure *and* its events, which arrive in
  any order (exposures are buffered for up to a flush interval, events come
  from apps whenever they like). Recomputing the whole unit from its raw facts
  gives the same answer whatever the order; folding each event in as it
  arrives would misplace events that precede their exposure's flush.
- The per-variant sums are a handful of rows per experiment. Updating them in
  every ingestion transaction would make every event of a variant wait for
  the others on those rows. Here ingestion only appends facts and touches its
  own units' queue rows; one aggregator at a time (a PostgreSQL advisory lock)
  writes the sums.

Consistency: a writer queues a unit (``unit_changes``) in the same transaction
as the facts, with an upsert that locks the queue row; the aggregator claims
queue rows with ``FOR UPDATE SKIP LOCKED`` and deletes them in the transaction
that recomputes those units and applies the difference (new contribution minus
the stored old one) to the sums. A fact committed after the claim re-queues
its unit, so nothing is missed, and a unit is never counted twice because its
old contribution is always taken out before the new one goes in. Results lag
the facts by at most one aggregation interval (``pending_units`` says how many
units are waiting).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.experiments.aggregation import (
    MetricRule,
    Observation,
    Sums,
    Window,
    hour_of,
    standing,
    unit_value,
    worth_storing,
)
from registry.experiments.repository import StatisticsRepository
from registry.experiments.sources import MetricSource, ObservationSource
from registry.stats.quantiles import bucket_of

logger = structlog.get_logger("registry.experiments.aggregator")


class UnitRecomputer:
    """Recomputes units' derived rows from their raw facts and moves the sums by the difference.

    The caller holds the statistics lock (``StatisticsRepository.lock``) in the session's transaction.
    """

    def __init__(self, session: AsyncSession, sources: Mapping[str, ObservationSource], *, grace: timedelta) -> None:
        self.session = session
        self.repository = StatisticsRepository(session)
        self.sources = sources
        self.grace = grace

    async def recompute(self, units: Sequence[str]) -> None:
        repository = self.repository
        exposures = await repository.exposures_of(units)
        old_standings = await repository.standings_of(units)
        old_values = await repository.metric_values_of(units)
        experiment_ids = {e.experiment_id for e in exposures} | {s.experiment_id for s in old_standings}
        experiments = await repository.experiments_by_id(experiment_ids)
        observations = await self._observations(units, experiments.values())
        # Per experiment, once per batch rather than per unit: reading them goes through the ORM's attributes.
        rules = {
            experiment_id: [
                MetricRule(link.metric_id, link.metric.aggregation, link.metric.analysis_kind)
                for link in experiment.metrics
            ]
            for experiment_id, experiment in experiments.items()
        }
        quantile_metrics = {
            rule.metric_id for metric_rules in rules.values() for rule in metric_rules if rule.is_quantile
        }

        seen: dict[tuple[int, int, str], list[tuple[str, datetime]]] = defaultdict(list)
        for exposure in exposures:
            seen[(exposure.experiment_id, exposure.phase, exposure.unit)].append(
                (exposure.variant, exposure.exposed_at)
            )

        standings: list[dict[str, Any]] = []
        values: list[dict[str, Any]] = []
        counts: Counter[tuple[int, int, str]] = Counter()
        multi: Counter[tuple[int, int]] = Counter()
        sums: defaultdict[tuple[int, int, str, int], Sums] = defaultdict(Sums)
        # The same, by hour of first exposure, for the results over time.
        hourly_units: Counter[tuple[int, int, str, datetime]] = Counter()
        hourly_sums: defaultdict[tuple[int, int, str, int, datetime], Sums] = defaultdict(Sums)
        # Quantile metrics: units per histogram bucket of their values.
        histograms: Counter[tuple[int, int, str, int, int]] = Counter()

        for (experiment_id, phase, unit), variants in seen.items():
            experiment = experiments[experiment_id]
            variant = standing(v for v, _ in variants)
            first = min(at for _, at in variants)
            standings.append(
                {
                    "experiment_id": experiment_id,
                    "phase": phase,
                    "unit": unit,
                    "variant": variant,
                    "first_exposed_at": first,
                }
            )
            hour = hour_of(first)
            if variant is None:
                multi[(experiment_id, phase)] += 1
            else:
                counts[(experiment_id, phase, variant)] += 1
                hourly_units[(experiment_id, phase, variant, hour)] += 1
            window = Window(
                first_exposed_at=first,
                phase_ended_at=next((p.ended_at for p in experiment.phases if p.number == phase), None),
                grace=self.grace,
                lookback=timedelta(days=experiment.cuped_lookback_days),
            )
            for rule in rules[experiment_id]:
                value, pre = unit_value(observations.get(unit, ()), rule, window, experiment_id)
                if not worth_storing(value, pre, rule.zero_filled):
                    continue
                values.append(
                    {
                        "experiment_id": experiment_id,
                        "phase": phase,
                        "metric_id": rule.metric_id,
                        "unit": unit,
                        "variant": variant,
                        "value": value,
                        "pre_value": pre,
                    }
                )
                if variant is not None and value is not None:
                    added = Sums.of(value, pre)
                    sums[(experiment_id, phase, variant, rule.metric_id)] += added
                    hourly_sums[(experiment_id, phase, variant, rule.metric_id, hour)] += added
                    if rule.is_quantile:
                        histograms[(experiment_id, phase, variant, rule.metric_id, bucket_of(value))] += 1

        old_hours: dict[tuple[int, int, str], datetime] = {}
        for old in old_standings:
            old_hours[(old.experiment_id, old.phase, old.unit)] = hour_of(old.first_exposed_at)
            if old.variant is None:
                multi[(old.experiment_id, old.phase)] -= 1
            else:
                counts[(old.experiment_id, old.phase, old.variant)] -= 1
                hourly_units[(old.experiment_id, old.phase, old.variant, hour_of(old.first_exposed_at))] -= 1
        for row in old_values:
            if row.variant is not None and row.value is not None:
                taken = -Sums.of(row.value, row.pre_value)
                sums[(row.experiment_id, row.phase, row.variant, row.metric_id)] += taken
                # A value row is written with its unit's standing, so the standing gives its hour.
                old_hour = old_hours[(row.experiment_id, row.phase, row.unit)]
                hourly_sums[(row.experiment_id, row.phase, row.variant, row.metric_id, old_hour)] += taken
                if row.metric_id in quantile_metrics:
                    histograms[(row.experiment_id, row.phase, row.variant, row.metric_id, bucket_of(row.value))] -= 1

        await repository.delete_unit_rows(units)
        await repository.insert_unit_rows(standings, values)
        await repository.add_counts({k: d for k, d in counts.items() if d})
        await repository.add_multi_variant_units({k: d for k, d in multi.items() if d})
        await repository.add_sums({k: s for k, s in sums.items() if not s.is_zero})
        await repository.add_hourly_units({k: d for k, d in hourly_units.items() if d})
        await repository.add_hourly_sums({k: s for k, s in hourly_sums.items() if not s.is_zero})
        await repository.add_histograms({k: d for k, d in histograms.items() if d})

    async def _observations(self, units: Sequence[str], experiments: Any) -> dict[str, list[Observation]]:
        by_source: dict[str, dict[int, MetricSource]] = defaultdict(dict)
        for experiment in experiments:
            for link in experiment.metrics:
                metric = link.metric
                by_source[metric.source][metric.id] = MetricSource(
                    metric.id, metric.source, metric.source_field, metric.denominator_field
                )
        found: dict[str, list[Observation]] = defaultdict(list)
        for name, metrics in by_source.items():
            source = self.sources.get(name)
            if source is None:
                logger.warning("metrics use a source that is not available", source=name)
                continue
            for unit, observed in (await source.observations(self.session, units, list(metrics.values()))).items():
                found[unit] += observed
        return found


class StatisticsAggregator:
    """The periodic job: claims queued units in batches and recomputes them (see the module docstring)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        sources: Mapping[str, ObservationSource],
        *,
        batch_size: int,
        grace: timedelta,
        time_budget: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._sources = sources
        self._batch_size = batch_size
        self._grace = grace
        self._time_budget = time_budget

    async def run(self) -> int:
        """Work through the queue for at most the time budget; returns the units recomputed."""
        deadline = time.monotonic() + self._time_budget
        total = 0
        while True:
            done = await self.run_once()
            total += done
            if done < self._batch_size or time.monotonic() >= deadline:
                return total

    async def run_once(self) -> int:
        async with self._sessionmaker() as session, session.begin():
            repository = StatisticsRepository(session)
            if not await repository.lock(wait=False):
                return 0  # another replica is aggregating
            units = await repository.claim_changed_units(self._batch_size)
            if units:
                await UnitRecomputer(session, self._sources, grace=self._grace).recompute(units)
            return len(units)

    async def drain(self) -> int:
        """Recompute every queued unit now (tests, benchmarks, shutdown)."""
        total = 0
        while done := await self.run_once():
            total += done
        return total

    async def rebuild(self, experiment_id: int) -> None:
        """Recompute an experiment's sums from its per-unit rows, clearing any rounding drift of the running sums."""
        async with self._sessionmaker() as session, session.begin():
            repository = StatisticsRepository(session)
            await repository.lock(wait=True)
            await repository.rebuild_sums(experiment_id)

    def recomputer(self, session: AsyncSession) -> UnitRecomputer:
        return UnitRecomputer(session, self._sources, grace=self._grace)
