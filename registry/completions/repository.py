"""All SQL of the completions domain: usage records, aggregates, budgets, retention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from typing import Any

import msgspec
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Date,
    Double,
    Integer,
    Row,
    Select,
    String,
    Subquery,
    TextClause,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    null,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from registry.auth.models import ApiKey
from registry.completions.models import ApiKeyBudget, CompletionRecord, DailyUsage
from registry.configs.models import ModelConfig, ModelConfigVersion
from registry.db.base import utcnow
from registry.experiments.models import Experiment, ExperimentVariant
from registry.prompts.models import Prompt, PromptVersion

C = CompletionRecord
_UNIT_CHUNK = 1000  # units per query: bound parameters stay far below SQLite's limit
D = DailyUsage

# The rollup's key columns, each with the completion column it copies and what stands for "none" (see DailyUsage),
# written into the statement rather than bound, so PostgreSQL sees the same expression in SELECT and GROUP BY.
_NO_NAME: ColumnElement[str] = literal_column("''")
_NO_NUMBER: ColumnElement[int] = literal_column("0")
ROLLUP_KEYS: dict[str, tuple[Any, Any]] = {
    "prompt": (C.prompt, _NO_NAME),
    "prompt_version": (C.prompt_version, _NO_NUMBER),
    "config": (C.config, _NO_NAME),
    "config_version": (C.config_version, _NO_NUMBER),
    "api_key_id": (C.api_key_id, _NO_NAME),
    "experiment_key": (C.experiment_key, _NO_NAME),
    "variant": (C.variant, _NO_NAME),
}
ROLLUP_SUMS = (
    "requests",
    "errors",
    "cached",
    "fallbacks",
    "input_tokens",
    "output_tokens",
    "cost",
    "latency_ms_sum",
    "latency_count",
    "ttft_ms_sum",
    "ttft_count",
)
RollupKey = tuple[date, str, int, str, int, str, str, str]


def rollup_deltas(records: Sequence[Mapping[str, Any]]) -> dict[RollupKey, list[float]]:
    """What ``records`` add to each row of the daily rollup (``ROLLUP_SUMS`` in order), by UTC day and group.

    A completion that failed over after its first config's backend spent tokens (``first_config``) adds that part
    to its first config's row (tokens and cost, no request) and the rest to its own, as ``completion_parts`` does.
    """
    deltas: dict[RollupKey, list[float]] = {}

    def add(key: RollupKey, added: Sequence[float]) -> None:
        row = deltas.setdefault(key, [0] * len(ROLLUP_SUMS))
        for i, value in enumerate(added):
            row[i] += value

    for record in records:
        day = record["created_at"].astimezone(UTC).date()
        prompt, version = record["prompt"], record.get("prompt_version") or 0
        rest = (record.get("api_key_id") or "", record.get("experiment_key") or "", record.get("variant") or "")
        spent = (record.get("input_tokens") or 0, record.get("output_tokens") or 0, record.get("cost") or 0.0)
        first_config = record.get("first_config")
        if first_config is not None:
            first = (
                record.get("first_input_tokens") or 0,
                record.get("first_output_tokens") or 0,
                record.get("first_cost") or 0.0,
            )
            spent = (spent[0] - first[0], spent[1] - first[1], spent[2] - first[2])
            first_key: RollupKey = (day, prompt, version, first_config, record.get("first_config_version") or 0, *rest)
            add(first_key, (0, 0, 0, 0, *first, 0.0, 0, 0.0, 0))
        latency, ttft = record.get("latency_ms"), record.get("ttft_ms")
        key: RollupKey = (day, prompt, version, record.get("config") or "", record.get("config_version") or 0, *rest)
        flags = (1, record.get("status") != "ok", bool(record.get("cached")), bool(record.get("fallback_used")))
        add(key, (*flags, *spent, latency or 0.0, latency is not None, ttft or 0.0, ttft is not None))
    return deltas


_RECORDS_TABLE: Any = CompletionRecord.__table__  # Core statements on the tables skip the ORM's bulk paths
_ROLLUP_TABLE: Any = DailyUsage.__table__
_INSERT_RECORDS = insert(_RECORDS_TABLE)
_ROLLUP_UPSERTS: dict[bool, Any] = {}
_RECORDS_FROM_JSON: dict[tuple[str, ...], tuple[TextClause, dict[str, Any]]] = {}


def _records_from_json(names: tuple[str, ...]) -> tuple[TextClause, dict[str, Any]]:
    """PostgreSQL's insert of records that have the columns ``names``, sent as one JSON array of objects,
    and the columns' defaults that the records lack (added to each: a Core insert fills them in Python).

    SQLAlchemy's executemany binds each value of each row in Python (about 20 us a record); msgspec
    encodes the batch in C and ``jsonb_to_recordset`` unpacks it in the server, as exposures and events
    are written (registry.experiments.repository). Text goes as ``text`` and is cast to the column on
    insert, so a value too long fails as the bound one did; a JSON null is SQL NULL. Built once per set of names.
    """
    built = _RECORDS_FROM_JSON.get(names)
    if built is None:
        table = _RECORDS_TABLE
        defaults: dict[str, Any] = {}
        for column in table.c:
            if column.name not in names and column.default is not None:
                if not column.default.is_scalar:  # created_at: add_records stamps every record that lacks it
                    raise ValueError(f"completion records must carry '{column.name}'")
                defaults[column.name] = column.default.arg
        dialect: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
        quote = dialect.identifier_preparer.quote
        columns = [table.c[name] for name in (*names, *defaults)]  # a name that is no column fails here
        listed = ", ".join(quote(column.name) for column in columns)
        typed = ", ".join(
            f"{quote(column.name)} {'text' if isinstance(column.type, String) else column.type.compile(dialect)}"
            for column in columns
        )
        statement = text(
            f"INSERT INTO {quote(table.name)} ({listed}) SELECT {listed} "  # noqa: S608 - the table's own columns
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({typed})"
        )
        built = _RECORDS_FROM_JSON[names] = (statement, defaults)
    return built


def _rollup_upsert(postgresql: bool) -> Any:
    """The rollup's upsert, built once per dialect: building it (and its ``excluded`` columns) costs about 1 ms."""
    statement = _ROLLUP_UPSERTS.get(postgresql)
    if statement is None:
        statement = (postgresql_insert if postgresql else sqlite_insert)(_ROLLUP_TABLE)
        statement = statement.on_conflict_do_update(
            index_elements=["day", *ROLLUP_KEYS],
            set_={name: D.__table__.c[name] + statement.excluded[name] for name in ROLLUP_SUMS},
        )
        _ROLLUP_UPSERTS[postgresql] = statement
    return statement


class CompletionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def is_postgresql(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    async def add_records(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert completions and add them to the daily rollup, in the caller's transaction.

        The rollup's rows are upserted in key order, so replicas flushing at once lock them in one
        order (no deadlocks); a record without ``created_at`` gets it here, so both agree on its day.
        """
        if not rows:
            return
        now = utcnow()
        records = [row if row.get("created_at") else {**row, "created_at": now} for row in rows]
        # Core inserts, one per set of keys (a Core executemany needs the same keys in every row): the ORM's bulk
        # insert sorts and copies each row again on the way.
        by_keys: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        for record in records:
            by_keys.setdefault(tuple(record), []).append(record)
        postgresql_bind = self.is_postgresql
        for columns, group in by_keys.items():
            if postgresql_bind:
                statement, defaults = _records_from_json(columns)
                rows_out = [{**defaults, **record} for record in group] if defaults else group
                await self.session.execute(statement, {"rows": msgspec.json.encode(rows_out).decode()})
            else:
                await self.session.execute(_INSERT_RECORDS, group)
        names = ["day", *ROLLUP_KEYS]
        additions = [
            {**dict(zip(names, key, strict=True)), **dict(zip(ROLLUP_SUMS, sums, strict=True))}
            for key, sums in sorted(rollup_deltas(records).items())
        ]
        await self.session.execute(_rollup_upsert(postgresql_bind), additions)

    async def rebuild_rollup(self) -> None:
        """Recompute the daily rollup from every completion (bulk loads; the migration does the same once)."""
        await self.session.execute(delete(DailyUsage))
        parts = completion_parts()
        day = self._day(parts.c.created_at).label("day")
        keys = [func.coalesce(parts.c[name], none).label(name) for name, (_, none) in ROLLUP_KEYS.items()]
        summed = select(
            day,
            *keys,
            *_part_measures(parts),
            func.coalesce(func.sum(parts.c.latency_ms), 0.0),
            func.count(parts.c.latency_ms),
            func.coalesce(func.sum(parts.c.ttft_ms), 0.0),
            func.count(parts.c.ttft_ms),
        ).group_by(day, *keys)
        await self.session.execute(insert(DailyUsage).from_select(["day", *ROLLUP_KEYS, *ROLLUP_SUMS], summed))

    def _day(self, created_at: Any = C.created_at) -> ColumnElement[Any]:
        """The UTC day of a record, typed as a date: SQLite's ``date()`` returns text that ``Date`` parses."""
        if self.session.get_bind().dialect.name == "postgresql":
            return func.date(func.timezone("UTC", created_at), type_=Date)
        return func.date(created_at, type_=Date)

    async def aggregate(
        self,
        group_by: Sequence[str],
        *,
        since: datetime,
        until: datetime,
        prompt: str | None,
        key: str | None,
        limit: int,
        among: tuple[str, Sequence[str | None]] | None = None,
        excluding: bool = False,
        from_completions: bool = False,
    ) -> list[dict[str, Any]]:
        """Usage in ``[since, until)`` grouped by ``group_by``: from the daily rollup when both are UTC midnights.

        The rollup gives the same groups in the same order as the completions would (a "none" stored as
        ``''`` or ``0`` is read back as NULL before grouping and sorting), the same counts and token sums,
        and costs and means summed in another order (equal up to floating-point rounding).
        ``among`` keeps the usage of some prompts or keys (``("key", [...])``, None for no key), or with
        ``excluding`` the usage of all others. ``from_completions`` reads the completions whatever the window.
        """
        columns: dict[str, Any]
        stored: dict[str, Any]
        if from_completions or not (_is_midnight(since) and _is_midnight(until)):
            query, columns = self._from_completions(group_by, since, until)
            stored = {name: func.coalesce(column, _NO_NAME) for name, column in columns.items()}
        else:
            query, columns = self._from_rollup(group_by, since, until), {"prompt": D.prompt, "key": D.api_key_id}
            stored = columns
        query = query.limit(limit)
        for name, value in (("prompt", prompt), ("key", key)):
            if value is not None:
                query = query.where(columns[name] == value)
        if among is not None:
            dimension, values = among
            kept = stored[dimension].in_([value or "" for value in values])
            query = query.where(~kept if excluding else kept)
        if group_by:
            query = query.group_by(*query.selected_columns[: len(group_by)])
            query = query.order_by(*query.selected_columns[: len(group_by)])
        return [dict(row._mapping) for row in (await self.session.execute(query)).all()]

    def _from_rollup(self, group_by: Sequence[str], since: datetime, until: datetime) -> Select[Any]:
        dimensions: dict[str, Any] = {
            "prompt": D.prompt,
            "version": func.nullif(D.prompt_version, 0),
            "config": func.nullif(D.config, ""),
            "config_version": func.nullif(D.config_version, 0),
            "key": func.nullif(D.api_key_id, ""),
            "day": D.day,
            "experiment": func.nullif(D.experiment_key, ""),
            "variant": func.nullif(D.variant, ""),
        }
        return select(
            *(dimensions[name].label(name) for name in group_by),
            *(_total(D.__table__.c[name]).label(name) for name in _COUNTS),
            func.coalesce(func.sum(D.cost), 0.0).label("cost"),
            (func.sum(D.latency_ms_sum) / func.nullif(func.sum(D.latency_count), 0)).label("mean_latency_ms"),
            (func.sum(D.ttft_ms_sum) / func.nullif(func.sum(D.ttft_count), 0)).label("mean_ttft_ms"),
        ).where(D.day >= since.astimezone(UTC).date(), D.day < until.astimezone(UTC).date())

    def _from_completions(
        self, group_by: Sequence[str], since: datetime, until: datetime
    ) -> tuple[Select[Any], dict[str, Any]]:
        """The report's query on the completions, and its prompt and key columns (to narrow it by).

        Grouped by config, a completion that failed over counts its first config's part under that config
        (``completion_parts``); otherwise each completion is read whole, which gives the same sums.
        """
        if "config" in group_by or "config_version" in group_by:
            parts = completion_parts(C.created_at >= since, C.created_at < until)
            by_part: dict[str, Any] = {
                "prompt": parts.c.prompt,
                "version": parts.c.prompt_version,
                "config": parts.c.config,
                "config_version": parts.c.config_version,
                "key": parts.c.api_key_id,
                "day": self._day(parts.c.created_at),
                "experiment": parts.c.experiment_key,
                "variant": parts.c.variant,
            }
            query = select(
                *(by_part[name].label(name) for name in group_by),
                *_part_measures(parts),
                func.avg(parts.c.latency_ms).label("mean_latency_ms"),
                func.avg(parts.c.ttft_ms).label("mean_ttft_ms"),
            )
            return query, {"prompt": parts.c.prompt, "key": parts.c.api_key_id}
        dimensions: dict[str, Any] = {
            "prompt": C.prompt,
            "version": C.prompt_version,
            "config": C.config,
            "config_version": C.config_version,
            "key": C.api_key_id,
            "day": self._day(),
            "experiment": C.experiment_key,
            "variant": C.variant,
        }
        query = select(
            *(dimensions[name].label(name) for name in group_by),
            *self._measures(),
            func.avg(C.latency_ms).label("mean_latency_ms"),
            func.avg(C.ttft_ms).label("mean_ttft_ms"),
        ).where(C.created_at >= since, C.created_at < until)
        return query, {"prompt": C.prompt, "key": C.api_key_id}

    @staticmethod
    def _measures() -> list[ColumnElement[Any]]:
        """Requests, errors, cache hits, fallbacks, tokens and cost of the completions grouped."""
        return [
            func.count().label("requests"),
            _count_where(C.status != "ok").label("errors"),
            _count_where(C.cached.is_(True)).label("cached"),
            _count_where(C.fallback_used.is_(True)).label("fallbacks"),
            func.coalesce(func.sum(C.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(C.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(C.cost), 0.0).label("cost"),
        ]

    async def month_usage(self, key: str, since: datetime) -> tuple[int, float]:
        """Tokens and cost a key spent on the backends since ``since`` (cache hits cost nothing)."""
        query = select(
            func.coalesce(func.sum(C.input_tokens + C.output_tokens), 0),
            func.coalesce(func.sum(C.cost), 0.0),
        ).where(C.api_key_id == key, C.created_at >= since, C.cached.is_(False))
        tokens, cost = (await self.session.execute(query)).one()
        return int(tokens), float(cost)

    async def measures_of_units(self, units: Sequence[str], columns: Sequence[str]) -> list[Row[Any]]:
        """The units' completions: unit, time, experiment id (when it names one that exists) and ``columns``.

        Read by the experiments' aggregator through ``registry.completions.observations``; the
        ``(unit, created_at)`` index finds them. A model guard's classifier's completions (``guard_check``) carry
        the unit they checked but are left out: the checked completion's latency, errors and count are the unit's.
        """
        rows: list[Row[Any]] = []
        selected = [C.unit, C.created_at, Experiment.id, *(C.__table__.c[name] for name in columns)]
        for start in range(0, len(units), _UNIT_CHUNK):
            query = (
                select(*selected)
                .outerjoin(Experiment, Experiment.key == C.experiment_key)
                .where(C.unit.in_(units[start : start + _UNIT_CHUNK]), C.guard_check.is_(False))
            )
            rows += (await self.session.execute(query)).all()
        return rows

    async def of_unit(
        self, unit: str
    ) -> Sequence[Row[str, int | None, str | None, int | None, datetime, str | None, str | None]]:
        """The unit's completions, oldest first: prompt, version, config, config version, time and stored texts."""
        texts = (C.prompt_text, C.completion_text)
        query = select(C.prompt, C.prompt_version, C.config, C.config_version, C.created_at, *texts)
        query = query.where(C.unit == unit).order_by(C.created_at, C.id)
        return (await self.session.execute(query)).all()

    async def anonymise_unit(self, unit: str) -> tuple[int, int]:
        """Cut the unit's completions loose from it: the unit, the request id and the stored texts are cleared.

        Returns how many completions were the unit's and how many of them held stored texts. What the usage, the
        budgets, the daily rollup, the alerts and the guard reports count stays (see ``UnitDataService.erase``).
        """
        has_text = (C.prompt_text.is_not(None)) | (C.completion_text.is_not(None))
        counted = select(func.count(), _count_where(has_text)).where(C.unit == unit)
        total, with_text = (await self.session.execute(counted)).one()
        if total:
            await self.session.execute(
                update(CompletionRecord)
                .where(C.unit == unit)
                .values(unit=None, request_id=None, prompt_text=None, completion_text=None)
            )
        return int(total), int(with_text or 0)

    async def purge_texts(self, before: datetime) -> int:
        """Clear stored prompts and completion texts older than ``before``; returns how many rows."""
        result = await self.session.execute(
            update(CompletionRecord)
            .where(
                C.created_at < before,
                (C.prompt_text.is_not(None)) | (C.completion_text.is_not(None)),
            )
            .values(prompt_text=None, completion_text=None)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    # -- budgets

    async def get_key(self, public_id: str) -> ApiKey | None:
        return (await self.session.execute(select(ApiKey).where(ApiKey.public_id == public_id))).scalar_one_or_none()

    async def get_budget(self, key_id: int) -> ApiKeyBudget | None:
        return await self.session.get(ApiKeyBudget, key_id)

    async def budgets_of(self, key_ids: Sequence[int]) -> list[ApiKeyBudget]:
        """The budgets of these keys, in one query (keys without one have no row)."""
        if not key_ids:
            return []
        query = select(ApiKeyBudget).where(ApiKeyBudget.api_key_id.in_(key_ids))
        return list((await self.session.scalars(query)).all())

    async def budget_of(self, public_id: str) -> ApiKeyBudget | None:
        query = (
            select(ApiKeyBudget).join(ApiKey, ApiKey.id == ApiKeyBudget.api_key_id).where(ApiKey.public_id == public_id)
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def save_budget(self, budget: ApiKeyBudget) -> None:
        self.session.add(budget)
        await self.session.flush()

    async def delete_budget(self, budget: ApiKeyBudget) -> None:
        await self.session.delete(budget)
        await self.session.flush()


def _is_midnight(moment: datetime) -> bool:
    return moment.tzinfo is not None and moment.astimezone(UTC).time() == time(0)


_COUNTS = ("requests", "errors", "cached", "fallbacks", "input_tokens", "output_tokens")


def _total(column: Any) -> ColumnElement[Any]:
    """A count column's sum as an integer, as the completions' counts are (PostgreSQL sums BIGINT into NUMERIC).

    ``errors``, ``cached`` and ``fallbacks`` stay NULL over no rows, as the completions' sums of flags do.
    """
    total: ColumnElement[Any] = func.sum(column)
    if column.name in ("requests", "input_tokens", "output_tokens"):
        total = func.coalesce(total, 0)
    return cast(total, BigInteger)


def _count_where(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(cast(case((condition, 1), else_=0), Integer))


def _flag(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return cast(case((condition, 1), else_=0), Integer)


_ONE: ColumnElement[int] = literal_column("1")


def completion_parts(*where: ColumnElement[bool], with_backend: bool = False) -> Subquery:
    """The completions in ``where`` as parts per config: each under its own config, less what its first config's
    backend spent before it failed over (``first_config``), and that part under the first config, as tokens and
    cost without a request, errors, cache hits, fallbacks or latencies. The rollup splits them so
    (``rollup_deltas``); summed over configs, the parts are the completions' totals.

    ``with_backend`` adds each part's ``backend``: the completion's own, and for the first config's part the backend
    its config version names (versions are immutable, so it is the one that spent it), for spend per backend.
    """
    shared = (C.created_at, C.prompt, C.prompt_version, C.api_key_id, C.experiment_key, C.variant)
    own_backend: list[Any] = [C.backend] if with_backend else []
    # The record's first backend; for records written before migration 0021, the one its first config version names.
    first_backend: list[Any] = (
        [func.coalesce(C.first_backend, _first_config_backend()).label("backend")] if with_backend else []
    )
    own = select(
        *shared,
        C.config,
        C.config_version,
        *own_backend,
        _ONE.label("requests"),
        _flag(C.status != "ok").label("errors"),
        _flag(C.cached.is_(True)).label("cached"),
        _flag(C.fallback_used.is_(True)).label("fallbacks"),
        (C.input_tokens - C.first_input_tokens).label("input_tokens"),
        (C.output_tokens - C.first_output_tokens).label("output_tokens"),
        (C.cost - C.first_cost).label("cost"),
        C.latency_ms,
        C.ttft_ms,
    ).where(*where)
    first = select(
        *shared,
        C.first_config,
        C.first_config_version,
        *first_backend,
        _NO_NUMBER,
        _NO_NUMBER,
        _NO_NUMBER,
        _NO_NUMBER,
        C.first_input_tokens,
        C.first_output_tokens,
        C.first_cost,
        cast(null(), Double),
        cast(null(), Double),
    ).where(*where, C.first_config.is_not(None))
    return union_all(own, first).subquery("parts")


def _first_config_backend() -> ColumnElement[Any]:
    """The backend a completion's first config version (``first_config``, ``first_config_version``) names."""
    return (
        select(ModelConfigVersion.backend)
        .join(ModelConfig, ModelConfig.id == ModelConfigVersion.config_id)
        .where(ModelConfig.name == C.first_config, ModelConfigVersion.number == C.first_config_version)
        .scalar_subquery()
    )


def failed_over_backend() -> ColumnElement[Any]:
    """The backend a failed-over completion (``fallback_used``) tried first, and that failed; NULL when the record
    does not tell (and for a completion that did not fail over).

    The record names it (``first_backend``) since migration 0021. Records written before name their first config
    only when that config's backend spent tokens (``first_config``); otherwise the first config is worked out as the
    one whose version's fallback is the version that served (a fallback is one hop): the experiment variant's config
    that routed the unit, else its prompt version's, else the backend every version falling back to the served one
    shares (a run on a config of the caller's choosing, as evaluation runs are).
    """
    tried, served, served_config = aliased(ModelConfigVersion), aliased(ModelConfigVersion), aliased(ModelConfig)

    def falling_back_to_served(query: Select[Any]) -> Select[Any]:
        return (
            query.join(served, served.id == tried.fallback_version_id)
            .join(served_config, served_config.id == served.config_id)
            .where(served_config.name == C.config, served.number == C.config_version)
        )

    variant = falling_back_to_served(
        select(tried.backend)
        .select_from(ExperimentVariant)
        .join(Experiment, Experiment.id == ExperimentVariant.experiment_id)
        .join(tried, tried.id == ExperimentVariant.config_version_id)
        .where(Experiment.key == C.experiment_key, ExperimentVariant.key == C.variant)
    )
    prompt_version = falling_back_to_served(
        select(tried.backend)
        .select_from(PromptVersion)
        .join(Prompt, Prompt.id == PromptVersion.prompt_id)
        .join(tried, tried.id == PromptVersion.config_version_id)
        .where(Prompt.name == C.prompt, PromptVersion.number == C.prompt_version)
    )
    only = falling_back_to_served(
        select(case((func.count(tried.backend.distinct()) == 1, func.min(tried.backend)))).select_from(tried)
    )
    inferred = func.coalesce(variant.scalar_subquery(), prompt_version.scalar_subquery(), only.scalar_subquery())
    return case(
        (C.fallback_used.is_not(True), null()),
        (C.first_backend.is_not(None), C.first_backend),
        (C.first_config.is_not(None), _first_config_backend()),
        else_=inferred,
    )


def backend_attempts(*where: ColumnElement[bool]) -> Subquery:
    """The completions in ``where`` as attempts per backend, for signals by backend: each under the backend that
    served it, and a failed-over one also as a failed attempt under the backend it tried first
    (``failed_over_backend``; left out where the record does not tell), so that backend's failures hidden behind a
    working fallback count against it.

    Latencies are the served attempts' only, and a failed-over completion has none: its record holds the whole
    request's time, the failed first attempt's included, which no backend took alone.
    """
    served = select(
        C.prompt,
        C.api_key_id,
        C.backend,
        C.status,
        case((C.fallback_used.is_(True), null()), else_=C.latency_ms).label("latency_ms"),
        case((C.fallback_used.is_(True), null()), else_=C.ttft_ms).label("ttft_ms"),
    ).where(*where)
    first = (
        select(C.prompt, C.api_key_id, failed_over_backend().label("backend")).where(*where, C.fallback_used.is_(True))
    ).subquery("first_attempts")
    failed = select(
        first.c.prompt,
        first.c.api_key_id,
        first.c.backend,
        literal_column("'error'").label("status"),
        cast(null(), Double).label("latency_ms"),
        cast(null(), Double).label("ttft_ms"),
    ).where(first.c.backend.is_not(None))
    return union_all(served, failed).subquery("attempts")


def _part_measures(parts: Subquery) -> list[ColumnElement[Any]]:
    """``CompletionRepository._measures`` over ``completion_parts``."""
    return [
        func.coalesce(func.sum(parts.c.requests), 0).label("requests"),
        func.sum(parts.c.errors).label("errors"),
        func.sum(parts.c.cached).label("cached"),
        func.sum(parts.c.fallbacks).label("fallbacks"),
        func.coalesce(func.sum(parts.c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(parts.c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(parts.c.cost), 0.0).label("cost"),
    ]
