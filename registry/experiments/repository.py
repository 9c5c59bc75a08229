"""Every query of the experiments domain.

Bulk writes use the dialect's ``INSERT ... ON CONFLICT`` (PostgreSQL and
SQLite both have it), so repeated exposures, duplicate events and
concurrent upserts of the same unit are resolved by the database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
from sqlalchemy import (
    ARRAY,
    Row,
    String,
    any_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from registry.auth.models import AuditEntry
from registry.configs.repository import CONFIG_VERSION_LOADS
from registry.db.base import utcnow
from registry.experiments.aggregation import Observation, Sums
from registry.experiments.models import (
    Experiment,
    ExperimentHourlyMetricSums,
    ExperimentHourlyUnits,
    ExperimentMetric,
    ExperimentMetricHistogram,
    ExperimentMetricSums,
    ExperimentPhase,
    ExperimentUnit,
    ExperimentVariant,
    ExperimentVariantCount,
    Exposure,
    Metric,
    OutcomeEvent,
    UnitChange,
    UnitMetricValue,
)
from registry.experiments.privacy_digest import window_start
from registry.lib.pagination import PageRequest
from registry.prompts.models import Prompt
from registry.stats.quantiles import bucket_of

# Bound parameters per statement stay far below SQLite's limit (32766); also the rows fetched at a time.
CHUNK = 1000
# Taken by whoever changes the derived statistics (aggregator, unit erasure, rebuilds) on PostgreSQL.
STATISTICS_LOCK = 0x5245_4758_5354_4154  # "REGXSTAT"
# Taken by a unit erasure alone and shared by the checks of committed writes against erasures, on PostgreSQL
# (``UnitDataRepository.lock_erasures``).
ERASURE_LOCK = 0x5245_4758_4552_4153  # "REGXERAS"
ERASURE_ACTION = "unit.erase"  # the audit action of a unit's erasure: its durable record, naming the unit's digest

EXPERIMENT_LOADS = (
    joinedload(Experiment.prompt),
    # A variant's config is read with its fallback: a completion routed to the variant falls back to it.
    selectinload(Experiment.variants).joinedload(ExperimentVariant.config_version).options(*CONFIG_VERSION_LOADS),
    selectinload(Experiment.metrics).joinedload(ExperimentMetric.metric),
    selectinload(Experiment.phases),
)


class _Repository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def is_postgresql(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def insert(self, model: Any) -> Any:
        """The dialect's INSERT (with ON CONFLICT) on the model's table, for Core executemany.

        Executed with a list of rows, SQLAlchemy compiles it once and sends the rows
        in batched multi-row VALUES ("insertmanyvalues"), RETURNING included.
        """
        table = model.__table__
        return postgresql_insert(table) if self.is_postgresql else sqlite_insert(table)

    async def execute_many(self, statement: Any, rows: Sequence[dict[str, Any]]) -> Any:
        return await self.session.execute(statement, list(rows)) if rows else None

    def unit_lists(self, units: Sequence[str]) -> Iterable[Sequence[str]]:
        """``units`` in lists for ``among``: one on PostgreSQL (one array parameter), chunks on SQLite."""
        if self.is_postgresql:
            yield units
            return
        for start in range(0, len(units), CHUNK):
            yield units[start : start + CHUNK]

    def among(self, column: Any, values: Sequence[str]) -> Any:
        """``column IN values``; on PostgreSQL ``column = ANY(array)``, one parameter for all of them.

        An expanded IN renders and casts a bound parameter per value on every execution, which was
        two-fifths of the aggregator's Python time. PostgreSQL's generic plan for ``= ANY($1)``
        (taken after five executions) assumes a short array and reads the unit index; an IN list
        of 1,000 units, planned with its values, fell to a sequential scan of a 200,000-row table,
        nearly four times slower.
        """
        if self.is_postgresql:
            return column == any_(bindparam(None, list(values), type_=ARRAY(String)))
        return column.in_(values)

    async def add(self, row: Any) -> None:
        self.session.add(row)
        await self.session.flush()


class MetricRepository(_Repository):
    async def get(self, key: str) -> Metric | None:
        return (await self.session.execute(select(Metric).where(Metric.key == key))).scalar_one_or_none()

    async def exists(self, key: str) -> bool:
        return bool(await self.session.scalar(select(exists().where(Metric.key == key))))

    async def by_keys(self, keys: Collection[str]) -> dict[str, Metric]:
        if not keys:
            return {}
        rows = (await self.session.scalars(select(Metric).where(Metric.key.in_(keys)))).all()
        return {m.key: m for m in rows}

    async def list_metrics(self, page: PageRequest) -> Sequence[Metric]:
        query = select(Metric).order_by(Metric.key).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(Metric.key > page.after_text)
        return (await self.session.scalars(query)).all()


class ExperimentRepository(_Repository):
    async def get(self, key: str, *, for_update: bool = False) -> Experiment | None:
        query = select(Experiment).where(Experiment.key == key).options(*EXPERIMENT_LOADS)
        if for_update:
            query = query.with_for_update(of=Experiment)
        return (await self.session.execute(query)).unique().scalar_one_or_none()

    async def exists(self, key: str) -> bool:
        return bool(await self.session.scalar(select(exists().where(Experiment.key == key))))

    async def ids_by_keys(self, keys: Collection[str]) -> dict[str, int]:
        if not keys:
            return {}
        rows = (await self.session.execute(select(Experiment.key, Experiment.id).where(Experiment.key.in_(keys)))).all()
        return {key: id_ for key, id_ in rows}

    async def list_experiments(
        self, page: PageRequest, *, status: str | None, prompt: str | None
    ) -> Sequence[Experiment]:
        query = select(Experiment).order_by(Experiment.key).limit(page.limit + 1).options(*EXPERIMENT_LOADS)
        if page.after is not None:
            query = query.where(Experiment.key > page.after_text)
        if status is not None:
            query = query.where(Experiment.status == status)
        if prompt is not None:
            query = query.join(Prompt, Prompt.id == Experiment.prompt_id).where(Prompt.name == prompt)
        return (await self.session.execute(query)).unique().scalars().all()

    async def running(self) -> Sequence[Experiment]:
        """The experiments the router needs: running ones (drafts never route)."""
        query = select(Experiment).where(Experiment.status == "running").options(*EXPERIMENT_LOADS)
        return (await self.session.execute(query)).unique().scalars().all()

    async def running_keys(self) -> Sequence[str]:
        query = select(Experiment.key).where(Experiment.status == "running").order_by(Experiment.key)
        return (await self.session.execute(query)).scalars().all()

    async def running_on_prompt(self, prompt_id: int, *, other_than: int) -> str | None:
        query = select(Experiment.key).where(
            Experiment.prompt_id == prompt_id, Experiment.status == "running", Experiment.id != other_than
        )
        return (await self.session.execute(query.limit(1))).scalar_one_or_none()

    async def running_in_namespace(self, namespace: str, *, other_than: int) -> list[tuple[str, float, float]]:
        """Running experiments of a namespace with their ranges [start, end)."""
        query = select(Experiment.key, Experiment.namespace_start, Experiment.namespace_end).where(
            Experiment.namespace == namespace, Experiment.status == "running", Experiment.id != other_than
        )
        return [
            (key, start, end)
            for key, start, end in (await self.session.execute(query)).all()
            if start is not None and end is not None
        ]


ExposureRow = tuple[int, int, str, str, float]  # experiment id, phase, unit, variant, first seen (Unix time)

# Exposures as one JSON document; the units of those inserted now (not of those another replica wrote first) are
# queued for the aggregator in the same statement. Rows are ordered by the statement (byte order, as "C"
# collates), not by the caller: replicas writing the same exposures at once must lock them in one order, and a
# sort of a second's exposures in Python stalled the event loop that serves renders for milliseconds.
_INSERT_EXPOSURES_POSTGRESQL = text(
    "WITH inserted AS ("
    "INSERT INTO exposures (experiment_id, phase, unit, variant, exposed_at) "
    "SELECT experiment_id, phase, unit, variant, exposed_at FROM ("
    "SELECT (r->>0)::bigint AS experiment_id, (r->>1)::integer AS phase, r->>2 AS unit, r->>3 AS variant, "
    "to_timestamp((r->>4)::float8) AS exposed_at FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS e(r)"
    ') AS batch ORDER BY experiment_id, phase, unit COLLATE "C", variant COLLATE "C" '
    "ON CONFLICT DO NOTHING RETURNING unit) "
    "INSERT INTO unit_changes (unit, changed_at) "
    'SELECT unit, CAST(:now AS timestamptz) FROM inserted GROUP BY unit ORDER BY unit COLLATE "C" '
    "ON CONFLICT (unit) DO UPDATE SET changed_at = excluded.changed_at"
)
# Events as a JSON array of objects, inserted in idempotency-key order for the same reason.
_INSERT_EVENTS_POSTGRESQL = text(
    "INSERT INTO outcome_events (idempotency_key, unit, metric_id, value, occurred_at, received_at, experiment_id) "
    "SELECT r->>'idempotency_key', r->>'unit', (r->>'metric_id')::bigint, (r->>'value')::float8, "
    "(r->>'occurred_at')::timestamptz, (r->>'received_at')::timestamptz, (r->>'experiment_id')::bigint "
    "FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS e(r) ORDER BY r->>'idempotency_key' COLLATE \"C\" "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key"
)
# In unit order, so concurrent writers lock queue rows in one order.
_MARK_UNITS_CHANGED_POSTGRESQL = text(
    "INSERT INTO unit_changes (unit, changed_at) "
    "SELECT unit, CAST(:now AS timestamptz) FROM jsonb_array_elements_text(CAST(:units AS jsonb)) AS u(unit) "
    'ORDER BY unit COLLATE "C" '
    "ON CONFLICT (unit) DO UPDATE SET changed_at = excluded.changed_at"
)
# The aggregator's derived rows, a batch as one JSON array of objects (see ``insert_unit_rows``).
_INSERT_STANDINGS_POSTGRESQL = text(
    "INSERT INTO experiment_units (experiment_id, phase, unit, variant, first_exposed_at) "
    "SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
    "AS r(experiment_id bigint, phase integer, unit text, variant text, first_exposed_at timestamptz)"
)
_INSERT_METRIC_VALUES_POSTGRESQL = text(
    "INSERT INTO unit_metric_values (experiment_id, phase, metric_id, unit, variant, value, pre_value) "
    "SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
    "AS r(experiment_id bigint, phase integer, metric_id bigint, unit text, variant text, "
    "value float8, pre_value float8)"
)


class IngestRepository(_Repository):
    """Writes of raw facts: outcome events and first exposures, each marking its units for the aggregator."""

    async def insert_events(self, rows: Sequence[dict[str, Any]]) -> set[str]:
        """Insert events, skipping idempotency keys already stored; returns the keys inserted now.

        On PostgreSQL the batch goes as one JSON document, for the reason given at
        ``insert_exposures_and_queue_units`` (SQLAlchemy's multi-row VALUES took about a third of the API's
        CPU per ingested event), and the statement inserts it in key order: a batch retried through another
        replica must not deadlock.
        """
        if not rows:
            return set()
        if self.is_postgresql:
            document = msgspec.json.encode(rows).decode()
            return set((await self.session.execute(_INSERT_EVENTS_POSTGRESQL, {"rows": document})).scalars().all())
        table = OutcomeEvent.__table__
        statement = (
            self.insert(OutcomeEvent)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(table.c.idempotency_key)
        )
        return set((await self.session.execute(statement, rows)).scalars().all())

    async def insert_exposures_and_queue_units(self, rows: Sequence[ExposureRow]) -> None:
        """Insert first exposures, skipping those already stored (another replica may have written them),
        and queue the units of those inserted for the aggregator.

        On PostgreSQL this is one statement, sent as one JSON document that the server unpacks and
        inserts in key order: msgspec encodes it in C, where a multi-row VALUES costs SQLAlchemy about
        10 µs of Python per row (and array parameters about 5), on the event loop that serves renders.
        The order matters because replicas often hold the same exposures (a user's requests reach
        several), and two writers taking the same unique-index entries in different orders deadlock.
        SQLite serializes writers, so there the order given is kept.
        """
        if not rows:
            return
        if self.is_postgresql:
            document = msgspec.json.encode(rows).decode()
            await self.session.execute(_INSERT_EXPOSURES_POSTGRESQL, {"rows": document, "now": utcnow()})
            return
        statement = self.insert(Exposure).on_conflict_do_nothing().returning(Exposure.__table__.c.unit)
        inserted = await self.execute_many(
            statement,
            [
                {"experiment_id": e, "phase": p, "unit": u, "variant": v, "exposed_at": datetime.fromtimestamp(at, UTC)}
                for e, p, u, v, at in rows
            ],
        )
        await self.mark_units_changed(set(inserted.scalars().all()))

    async def mark_units_changed(self, units: Collection[str]) -> None:
        """Queue units for the aggregator, in the same transaction as the facts that changed them.

        An existing queue row is updated, not skipped: the update locks it, so an
        aggregator claiming it waits for this transaction and then sees its facts.
        On PostgreSQL the statement takes them in unit order, so concurrent writers lock rows in one
        order (no deadlocks).
        """
        distinct = list(set(units))
        if not distinct:
            return
        now = utcnow()
        if self.is_postgresql:
            units_json = msgspec.json.encode(distinct).decode()
            await self.session.execute(_MARK_UNITS_CHANGED_POSTGRESQL, {"units": units_json, "now": now})
            return
        statement = self.insert(UnitChange)
        statement = statement.on_conflict_do_update(
            index_elements=["unit"], set_={"changed_at": statement.excluded.changed_at}
        )
        await self.execute_many(statement, [{"unit": u, "changed_at": now} for u in distinct])


class StatisticsRepository(_Repository):
    """Reads and writes of the derived statistics (aggregator, rebuilds, results)."""

    async def lock(self, *, wait: bool) -> bool:
        """Take the statistics lock for this transaction (PostgreSQL; SQLite serializes writers itself)."""
        if not self.is_postgresql:
            return True
        if wait:
            await self.session.execute(select(func.pg_advisory_xact_lock(STATISTICS_LOCK)))
            return True
        return bool(await self.session.scalar(select(func.pg_try_advisory_xact_lock(STATISTICS_LOCK))))

    async def claim_changed_units(self, limit: int) -> list[str]:
        oldest = select(UnitChange.unit).order_by(UnitChange.changed_at).limit(limit).with_for_update(skip_locked=True)
        statement = delete(UnitChange).where(UnitChange.unit.in_(oldest)).returning(UnitChange.unit)
        return list((await self.session.execute(statement)).scalars().all())

    async def mark_experiment_units_changed(self, experiment_id: int) -> None:
        units = select(Exposure.unit, literal(utcnow())).where(Exposure.experiment_id == experiment_id).distinct()
        statement = self.insert(UnitChange).from_select(["unit", "changed_at"], units)
        statement = statement.on_conflict_do_update(
            index_elements=["unit"], set_={"changed_at": statement.excluded.changed_at}
        )
        await self.session.execute(statement)

    async def forget_metric_values(self, experiment_id: int) -> None:
        """Drop an experiment's metric values and sums (its metrics changed); the aggregator rebuilds them."""
        await self.session.execute(delete(UnitMetricValue).where(UnitMetricValue.experiment_id == experiment_id))
        for sums in (ExperimentMetricSums, ExperimentHourlyMetricSums, ExperimentMetricHistogram):
            await self.session.execute(delete(sums).where(sums.experiment_id == experiment_id))

    async def exposures_of(self, units: Sequence[str]) -> list[Row[Any]]:
        return await self._rows_of_units(Exposure, units)

    async def standings_of(self, units: Sequence[str]) -> list[Row[Any]]:
        return await self._rows_of_units(ExperimentUnit, units)

    async def metric_values_of(self, units: Sequence[str]) -> list[Row[Any]]:
        return await self._rows_of_units(UnitMetricValue, units)

    async def _rows_of_units(self, model: Any, units: Sequence[str]) -> list[Row[Any]]:
        """A table's rows for these units, as plain rows: the aggregator reads thousands and changes none."""
        table = model.__table__
        rows: list[Row[Any]] = []
        for chunk in self.unit_lists(units):
            rows += (await self.session.execute(select(*table.c).where(self.among(table.c.unit, chunk)))).all()
        return rows

    async def experiments_by_id(self, ids: Collection[int]) -> dict[int, Experiment]:
        if not ids:
            return {}
        query = (
            select(Experiment)
            .where(Experiment.id.in_(ids))
            .options(
                selectinload(Experiment.metrics).joinedload(ExperimentMetric.metric), selectinload(Experiment.phases)
            )
        )
        return {e.id: e for e in (await self.session.execute(query)).unique().scalars().all()}

    async def event_observations(
        self, units: Sequence[str], metric_ids: Collection[int]
    ) -> dict[str, list[Observation]]:
        found: dict[str, list[Observation]] = {}
        if not metric_ids:
            return found
        for chunk in self.unit_lists(units):
            query = select(
                OutcomeEvent.unit,
                OutcomeEvent.metric_id,
                OutcomeEvent.occurred_at,
                OutcomeEvent.value,
                OutcomeEvent.experiment_id,
            ).where(self.among(OutcomeEvent.unit, chunk), OutcomeEvent.metric_id.in_(metric_ids))
            for unit, metric_id, occurred_at, value, experiment_id in (await self.session.execute(query)).all():
                found.setdefault(unit, []).append(Observation(metric_id, occurred_at, value, experiment_id))
        return found

    async def delete_unit_rows(self, units: Sequence[str]) -> None:
        for chunk in self.unit_lists(units):
            for model in (ExperimentUnit, UnitMetricValue):
                # Not synchronized with the session (which holds none of these rows): that fetches every deleted key.
                statement = delete(model).where(self.among(model.unit, chunk))
                await self.session.execute(statement.execution_options(synchronize_session=False))

    async def insert_unit_rows(self, standings: Sequence[dict[str, Any]], values: Sequence[dict[str, Any]]) -> None:
        """Insert units' standings and metric values (deleted first with ``delete_unit_rows``).

        On PostgreSQL each table's rows go as one JSON document, as exposures and events do:
        SQLAlchemy's multi-row VALUES took 1.5 to 1.8 times as long for the aggregator's thousands of rows.
        """
        if not self.is_postgresql:
            await self.execute_many(self.insert(ExperimentUnit), standings)
            await self.execute_many(self.insert(UnitMetricValue), values)
            return
        for statement, rows in ((_INSERT_STANDINGS_POSTGRESQL, standings), (_INSERT_METRIC_VALUES_POSTGRESQL, values)):
            if rows:
                await self.session.execute(statement, {"rows": msgspec.json.encode(rows).decode()})

    async def _add(self, model: Any, keys: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        """Upsert rows that add their other columns to the stored ones (rows sorted: writers lock in one order)."""
        if not rows:
            return
        columns = model.__table__.c
        statement = self.insert(model)
        excluded = statement.excluded
        added = [name for name in rows[0] if name not in keys]
        statement = statement.on_conflict_do_update(
            index_elements=list(keys), set_={name: columns[name] + excluded[name] for name in added}
        )
        await self.execute_many(statement, rows)

    async def add_counts(self, deltas: Mapping[tuple[int, int, str], int]) -> None:
        rows = [{"experiment_id": e, "phase": p, "variant": v, "units": d} for (e, p, v), d in sorted(deltas.items())]
        await self._add(ExperimentVariantCount, ("experiment_id", "phase", "variant"), rows)

    async def add_sums(self, deltas: Mapping[tuple[int, int, str, int], Sums]) -> None:
        rows = [
            {
                "experiment_id": e,
                "phase": p,
                "variant": v,
                "metric_id": m,
                "n": s.n,
                "sum": s.sum,
                "sum_squares": s.sum_squares,
                "pre_sum": s.pre_sum,
                "pre_sum_squares": s.pre_sum_squares,
                "cross_sum": s.cross_sum,
            }
            for (e, p, v, m), s in sorted(deltas.items())
        ]
        await self._add(ExperimentMetricSums, ("experiment_id", "phase", "variant", "metric_id"), rows)

    async def add_hourly_units(self, deltas: Mapping[tuple[int, int, str, datetime], int]) -> None:
        rows = [
            {"experiment_id": e, "phase": p, "variant": v, "hour": h, "units": d}
            for (e, p, v, h), d in sorted(deltas.items())
        ]
        await self._add(ExperimentHourlyUnits, ("experiment_id", "phase", "variant", "hour"), rows)

    async def add_hourly_sums(self, deltas: Mapping[tuple[int, int, str, int, datetime], Sums]) -> None:
        """The hourly rows keep a metric's count, sum and sum of squares (no covariate: the charts show means)."""
        rows = [
            {
                "experiment_id": e,
                "phase": p,
                "variant": v,
                "metric_id": m,
                "hour": h,
                "n": s.n,
                "sum": s.sum,
                "sum_squares": s.sum_squares,
            }
            for (e, p, v, m, h), s in sorted(deltas.items())
        ]
        await self._add(ExperimentHourlyMetricSums, ("experiment_id", "phase", "variant", "metric_id", "hour"), rows)

    async def add_histograms(self, deltas: Mapping[tuple[int, int, str, int, int], int]) -> None:
        rows = [
            {"experiment_id": e, "phase": p, "variant": v, "metric_id": m, "bucket": b, "units": d}
            for (e, p, v, m, b), d in sorted(deltas.items())
        ]
        await self._add(ExperimentMetricHistogram, ("experiment_id", "phase", "variant", "metric_id", "bucket"), rows)

    async def add_multi_variant_units(self, deltas: Mapping[tuple[int, int], int]) -> None:
        for (experiment_id, phase), delta in sorted(deltas.items()):
            await self.session.execute(
                update(ExperimentPhase)
                .where(ExperimentPhase.experiment_id == experiment_id, ExperimentPhase.number == phase)
                .values(units_in_multiple_variants=ExperimentPhase.units_in_multiple_variants + delta)
            )

    async def rebuild_sums(self, experiment_id: int) -> None:
        """Recompute an experiment's counts and sums, overall and per hour, from its per-unit rows.

        The aggregator keeps them by differences; this recomputation gives the same numbers (up to
        floating-point rounding of the running sums) and is how a bulk load of per-unit rows is summed.
        """
        units, values = ExperimentUnit, UnitMetricValue
        derived = (ExperimentVariantCount, ExperimentMetricSums, ExperimentHourlyUnits, ExperimentHourlyMetricSums)
        for model in derived:
            await self.session.execute(delete(model).where(model.experiment_id == experiment_id))
        hour = self._hour_start(units.first_exposed_at).label("hour")
        for model, by_hour in ((ExperimentVariantCount, []), (ExperimentHourlyUnits, [hour])):
            groups = [units.experiment_id, units.phase, units.variant, *by_hour]
            counted = (
                select(*groups, func.count())
                .where(units.experiment_id == experiment_id, units.variant.is_not(None))
                .group_by(*groups)
            )
            columns = ["experiment_id", "phase", "variant", *(["hour"] if by_hour else []), "units"]
            await self.session.execute(self.insert(model).from_select(columns, counted))
        groups = [values.experiment_id, values.phase, values.variant, values.metric_id]
        counted_values: list[Any] = [func.count(), func.sum(values.value), func.sum(values.value * values.value)]
        summed = (
            select(
                *groups,
                *counted_values,
                func.sum(values.pre_value),
                func.sum(values.pre_value * values.pre_value),
                func.sum(values.value * values.pre_value),
            )
            .where(values.experiment_id == experiment_id, values.variant.is_not(None), values.value.is_not(None))
            .group_by(*groups)
        )
        columns = ["experiment_id", "phase", "variant", "metric_id", "n", "sum", "sum_squares"]
        await self.session.execute(
            self.insert(ExperimentMetricSums).from_select([*columns, "pre_sum", "pre_sum_squares", "cross_sum"], summed)
        )
        # Per hour of the unit's first exposure, which its standing holds.
        hourly = (
            select(*groups, hour, *counted_values)
            .join(
                units,
                (units.experiment_id == values.experiment_id)
                & (units.phase == values.phase)
                & (units.unit == values.unit),
            )
            .where(values.experiment_id == experiment_id, values.variant.is_not(None), values.value.is_not(None))
            .group_by(*groups, hour)
        )
        await self.session.execute(
            self.insert(ExperimentHourlyMetricSums).from_select([*columns[:4], "hour", *columns[4:]], hourly)
        )
        await self._rebuild_histograms(experiment_id)
        multi = (
            select(func.count())
            .where(
                units.experiment_id == experiment_id,
                units.phase == ExperimentPhase.number,
                units.variant.is_(None),
            )
            .scalar_subquery()
        )
        await self.session.execute(
            update(ExperimentPhase)
            .where(ExperimentPhase.experiment_id == experiment_id)
            .values(units_in_multiple_variants=multi)
        )

    async def _rebuild_histograms(self, experiment_id: int) -> None:
        """The quantile metrics' histograms from the per-unit values (buckets computed here: SQLite has no log)."""
        table = ExperimentMetricHistogram
        await self.session.execute(delete(table).where(table.experiment_id == experiment_id))
        values = UnitMetricValue
        query = (
            select(values.phase, values.variant, values.metric_id, values.value)
            .join(Metric, Metric.id == values.metric_id)
            .where(
                values.experiment_id == experiment_id,
                values.variant.is_not(None),
                values.value.is_not(None),
                Metric.statistic == "quantile",
            )
        )
        counts: Counter[tuple[int, int, str, int, int]] = Counter()
        for phase, variant, metric_id, value in (await self.session.execute(query)).all():
            counts[(experiment_id, phase, str(variant), metric_id, bucket_of(cast(float, value)))] += 1
        await self.add_histograms(counts)

    async def histograms(self, experiment_id: int, phase: int) -> dict[tuple[str, int], dict[int, int]]:
        """Per (variant, metric id): units per bucket of the quantile metrics' values."""
        table = ExperimentMetricHistogram
        query = select(table.variant, table.metric_id, table.bucket, table.units).where(
            table.experiment_id == experiment_id, table.phase == phase, table.units != 0
        )
        found: dict[tuple[str, int], dict[int, int]] = {}
        for variant, metric_id, bucket, units in (await self.session.execute(query)).all():
            found.setdefault((variant, metric_id), {})[bucket] = int(units)
        return found

    async def variant_counts(self, experiment_id: int, phase: int) -> dict[str, int]:
        query = select(ExperimentVariantCount.variant, ExperimentVariantCount.units).where(
            ExperimentVariantCount.experiment_id == experiment_id, ExperimentVariantCount.phase == phase
        )
        return {variant: int(units) for variant, units in (await self.session.execute(query)).all()}

    async def metric_sums(self, experiment_id: int, phase: int) -> dict[tuple[str, int], Sums]:
        table = ExperimentMetricSums
        query = select(table).where(table.experiment_id == experiment_id, table.phase == phase)
        return {
            (row.variant, row.metric_id): Sums(
                row.n, row.sum, row.sum_squares, row.pre_sum, row.pre_sum_squares, row.cross_sum
            )
            for row in (await self.session.scalars(query)).all()
        }

    async def exposure_timeline(
        self, experiment_id: int, phase: int, metric_id: int | None, *, bucket: str
    ) -> list[tuple[datetime, str, int, int, float]]:
        """Per (``bucket`` of first exposure, variant): the units, how many have a value of the metric, its sum.

        ``bucket`` is ``hour`` or ``day`` (UTC). Read from the per-hour rows the aggregator keeps
        (``experiment_hourly_units``, ``experiment_hourly_metric_sums``): a few rows per hour and
        variant, whatever the phase's units, where grouping the per-unit rows cost about 0.5 ms per
        1,000 units. Units seen in several variants are not in them, as in the results; rows whose
        units have all moved away (zero units, or no values) are skipped, as if never written.
        """
        hourly_units, hourly_sums = ExperimentHourlyUnits, ExperimentHourlyMetricSums
        at = self._bucket(hourly_units.hour, bucket).label("at")
        counted = (
            select(at, hourly_units.variant, func.sum(hourly_units.units))
            .where(
                hourly_units.experiment_id == experiment_id,
                hourly_units.phase == phase,
                hourly_units.units != 0,
            )
            .group_by(at, hourly_units.variant)
        )
        found = {
            (_utc(when), variant): [int(count), 0, 0.0]
            for when, variant, count in (await self.session.execute(counted)).all()
        }
        if metric_id is not None:
            at = self._bucket(hourly_sums.hour, bucket).label("at")
            summed = (
                select(at, hourly_sums.variant, func.sum(hourly_sums.n), func.sum(hourly_sums.sum))
                .where(
                    hourly_sums.experiment_id == experiment_id,
                    hourly_sums.phase == phase,
                    hourly_sums.metric_id == metric_id,
                    hourly_sums.n != 0,
                )
                .group_by(at, hourly_sums.variant)
            )
            for when, variant, valued, total in (await self.session.execute(summed)).all():
                row = found.setdefault((_utc(when), variant), [0, 0, 0.0])
                row[1], row[2] = int(valued), float(total)
        return [(when, variant, *row) for (when, variant), row in sorted(found.items())]

    def _bucket(self, column: Any, bucket: str) -> Any:
        """The start of the hour or day (UTC) of ``column``, as each dialect writes it."""
        if self.is_postgresql:
            return func.date_trunc(bucket, func.timezone("UTC", column))
        # SQLite stores naive UTC text, which strftime reads.
        return func.strftime("%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00", column)

    def _hour_start(self, column: Any) -> Any:
        """The start of ``column``'s hour (UTC), as the column type stores it (what ``hour_of`` gives in Python)."""
        if self.is_postgresql:
            return func.timezone("UTC", func.date_trunc("hour", func.timezone("UTC", column)))
        # SQLAlchemy writes SQLite datetimes with microseconds; a key written otherwise would not match.
        return func.strftime("%Y-%m-%d %H:00:00.000000", column)

    async def pending_units(self, experiment_id: int, phase: int) -> int:
        query = (
            select(func.count(func.distinct(UnitChange.unit)))
            .join(Exposure, Exposure.unit == UnitChange.unit)
            .where(Exposure.experiment_id == experiment_id, Exposure.phase == phase)
        )
        return int(await self.session.scalar(query) or 0)

    async def changed_units_count(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(UnitChange)) or 0)


class UnitDataRepository(_Repository):
    """A unit's data across the domain, to show it (privacy access) or erase it."""

    async def exposures(self, unit: str) -> Sequence[Row[str, int, str, datetime]]:
        query = (
            select(Experiment.key, Exposure.phase, Exposure.variant, Exposure.exposed_at)
            .join(Experiment, Experiment.id == Exposure.experiment_id)
            .where(Exposure.unit == unit)
            .order_by(Exposure.exposed_at)
        )
        return (await self.session.execute(query)).all()

    async def events(self, unit: str) -> Sequence[Row[str, float, datetime, str, str, datetime]]:
        query = (
            select(
                Metric.key,
                OutcomeEvent.value,
                OutcomeEvent.occurred_at,
                OutcomeEvent.idempotency_key,
                Experiment.key,
                OutcomeEvent.received_at,
            )
            .join(Metric, Metric.id == OutcomeEvent.metric_id)
            .outerjoin(Experiment, Experiment.id == OutcomeEvent.experiment_id)
            .where(OutcomeEvent.unit == unit)
            .order_by(OutcomeEvent.occurred_at, OutcomeEvent.id)
        )
        return (await self.session.execute(query)).all()

    async def standings(self, unit: str) -> Sequence[Row[int, str, int, str | None, datetime]]:
        query = (
            select(
                ExperimentUnit.experiment_id,
                Experiment.key,
                ExperimentUnit.phase,
                ExperimentUnit.variant,
                ExperimentUnit.first_exposed_at,
            )
            .join(Experiment, Experiment.id == ExperimentUnit.experiment_id)
            .where(ExperimentUnit.unit == unit)
            .order_by(Experiment.key, ExperimentUnit.phase)
        )
        return (await self.session.execute(query)).all()

    async def metric_values(self, unit: str) -> Sequence[Row[int, int, str, float | None, float]]:
        query = (
            select(
                UnitMetricValue.experiment_id,
                UnitMetricValue.phase,
                Metric.key,
                UnitMetricValue.value,
                UnitMetricValue.pre_value,
            )
            .join(Metric, Metric.id == UnitMetricValue.metric_id)
            .where(UnitMetricValue.unit == unit)
        )
        return (await self.session.execute(query)).all()

    async def forced_in(self, unit: str, *, for_update: bool = False) -> list[tuple[Experiment, str]]:
        """The experiments that pin ``unit`` to a variant (forced variants: QA units, named by their ids), each with
        that variant. The pins are read from the experiments that have any: a few hundred small maps at most."""
        query = select(Experiment).order_by(Experiment.key)
        if self.is_postgresql:  # the JSONB key test; SQLite's JSON is read whole
            query = query.where(type_coerce(Experiment.forced_variants, JSONB).has_key(unit))
        if for_update:
            query = query.with_for_update()
        experiments = (await self.session.scalars(query)).all()
        return [(e, str(e.forced_variants[unit])) for e in experiments if unit in e.forced_variants]

    async def delete_facts(self, unit: str) -> tuple[int, int]:
        """Delete the unit's exposures and events; returns how many of each."""
        exposures = await self.session.execute(delete(Exposure).where(Exposure.unit == unit))
        events = await self.session.execute(delete(OutcomeEvent).where(OutcomeEvent.unit == unit))
        return _rowcount(exposures), _rowcount(events)

    async def delete_change_marker(self, unit: str) -> None:
        await self.session.execute(delete(UnitChange).where(UnitChange.unit == unit))

    async def lock_erasures(self, *, erasing: bool) -> None:
        """Order this transaction with the unit erasures under way (PostgreSQL; SQLite runs one writing
        transaction at a time): an erasure takes the lock alone, from before its deletes until it ends; a check
        of committed writes shares it, so it waits for an erasure under way to commit (or roll back) before it
        reads the erasures."""
        if not self.is_postgresql:
            return
        lock = func.pg_advisory_xact_lock if erasing else func.pg_advisory_xact_lock_shared
        await self.session.execute(select(lock(ERASURE_LOCK)))

    async def erasures_covering(self, digests: Collection[str], first_seen: float) -> dict[str, datetime]:
        """The erasures (digest -> when) of the units of ``digests`` that may cover data first seen at
        ``first_seen`` (Unix time) or later: those within the window before it, or since. Read once any erasure
        under way has committed or rolled back (``lock_erasures``, shared): a check of committed writes."""
        await self.lock_erasures(erasing=False)
        return await self.erasures_since(digests, datetime.fromtimestamp(window_start(first_seen), UTC))

    async def erasures_since(self, digests: Collection[str], since: datetime) -> dict[str, datetime]:
        """When each unit of ``digests`` was last erased, of those erased at or after ``since``: from the audit
        entries of the erasures, which name the unit by its digest (one index lookup per digest)."""
        erased: dict[str, datetime] = {}
        for chunk in self.unit_lists(sorted(digests)):
            query = (
                select(AuditEntry.resource_name, func.max(AuditEntry.created_at))
                .where(
                    AuditEntry.resource_type == "unit",
                    self.among(AuditEntry.resource_name, chunk),
                    AuditEntry.action == ERASURE_ACTION,
                    AuditEntry.created_at >= since,
                )
                .group_by(AuditEntry.resource_name)
            )
            for digest, at in (await self.session.execute(query)).all():
                erased[digest] = _utc(at)
        return erased


def _utc(value: datetime | str) -> datetime:
    """A bucket's start as an aware UTC datetime (PostgreSQL gives a naive timestamp, SQLite text)."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


class ExportRepository(_Repository):
    async def unit_rows(
        self, experiment_id: int, phase: int, *, exposed_from: datetime | None, exposed_to: datetime | None
    ) -> AsyncIterator[Row[str, str | None, datetime, int | None, float | None, float | None]]:
        """Units of a phase with their metric values (and covariates: a ratio's denominators), one row per
        (unit, metric), ordered by unit."""
        query = (
            select(
                ExperimentUnit.unit,
                ExperimentUnit.variant,
                ExperimentUnit.first_exposed_at,
                UnitMetricValue.metric_id,
                UnitMetricValue.value,
                UnitMetricValue.pre_value,
            )
            .outerjoin(
                UnitMetricValue,
                (UnitMetricValue.experiment_id == ExperimentUnit.experiment_id)
                & (UnitMetricValue.phase == ExperimentUnit.phase)
                & (UnitMetricValue.unit == ExperimentUnit.unit),
            )
            .where(ExperimentUnit.experiment_id == experiment_id, ExperimentUnit.phase == phase)
            .order_by(ExperimentUnit.unit)
        )
        query = _exposed_between(query, exposed_from, exposed_to)
        result = await self.session.stream(query.execution_options(yield_per=CHUNK))
        async for row in result:
            yield row


def _exposed_between(query: Any, exposed_from: datetime | None, exposed_to: datetime | None) -> Any:
    if exposed_from is not None:
        query = query.where(ExperimentUnit.first_exposed_at >= exposed_from)
    if exposed_to is not None:
        query = query.where(ExperimentUnit.first_exposed_at < exposed_to)
    return query


__all__ = [
    "ExperimentRepository",
    "ExportRepository",
    "IngestRepository",
    "MetricRepository",
    "StatisticsRepository",
    "UnitDataRepository",
]
