"""All SQL of alerts: rules, their leases, incidents, and the signals read from what the registry stores.

Every window query reads completions by ``created_at`` (its own index, or the key's ``(api_key_id,
created_at)`` one), budgets through the key's index, and rollbacks through ``rollout_events.at`` (added
by migration 0014); tests/alerts/test_signal_indexes.py asks PostgreSQL's planner to confirm.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, case, delete, func, literal, or_, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry.alerts.evaluation import Window, quantile, signal_value
from registry.alerts.models import AlertIncident, AlertRule
from registry.auth.models import ApiKey
from registry.completions.models import ApiKeyBudget, CompletionRecord
from registry.completions.pricing import month_start
from registry.completions.repository import backend_attempts, completion_parts
from registry.lib.pagination import PageRequest
from registry.prompts.models import Prompt
from registry.rollouts.models import Rollout, RolloutEvent

C = CompletionRecord
QUANTILE = 0.95
QUANTILE_COLUMNS = {"latency_p95": C.latency_ms, "ttft_p95": C.ttft_ms}
GROUP_COLUMNS = {"prompt": C.prompt, "backend": C.backend, "key": C.api_key_id}


@dataclass(frozen=True, slots=True)
class Selection:
    """What a rule watches: its scope (each None means all) and how it splits into series."""

    kind: str
    prompt: str | None = None
    backend: str | None = None
    api_key: str | None = None
    group_by: str | None = None

    @classmethod
    def of(cls, rule: AlertRule) -> Selection:
        return cls(rule.kind, rule.prompt, rule.backend, rule.api_key, rule.group_by)


def _subject(value: Any) -> str:
    return "" if value is None else str(value)


def _columns(*columns: Any) -> list[Any]:
    return list(columns)


def completion_query(selection: Selection, since: datetime, until: datetime, *, quantile_in_sql: bool) -> Select[Any]:
    """The window's completions, per series, with what the rule's kind reads."""
    group: ColumnElement[Any] = (
        GROUP_COLUMNS[selection.group_by].label("subject") if selection.group_by else literal("").label("subject")
    )
    where: list[ColumnElement[bool]] = [C.created_at > since, C.created_at <= until]
    if selection.prompt is not None:
        where.append(C.prompt == selection.prompt)
    if selection.api_key is not None:
        where.append(C.api_key_id == selection.api_key)
    kind = selection.kind
    by_backend = selection.backend is not None or selection.group_by == "backend"
    if kind == "cost_per_hour" and by_backend:
        return backend_cost_query(selection, where)
    if kind in ("error_rate", *QUANTILE_COLUMNS) and by_backend:
        return backend_attempt_query(selection, where, quantile_in_sql=quantile_in_sql)
    if kind == "breaker_open":
        return breaker_refusal_query(selection, where)
    if selection.backend is not None:
        where.append(C.backend == selection.backend)
    if kind == "error_rate":
        ended = func.coalesce(func.sum(case((C.status.in_(("ok", "error")), 1), else_=0)), 0)
        failed = func.coalesce(func.sum(case((C.status == "error", 1), else_=0)), 0)
        columns: list[Any] = [ended, failed]
    elif kind in QUANTILE_COLUMNS:
        measured = QUANTILE_COLUMNS[kind]
        where += [C.status == "ok", measured.is_not(None)]
        if not quantile_in_sql:  # SQLite has no percentile_cont: every value, folded in Python
            return select(group, measured).where(*where)
        columns = [func.count(measured), func.percentile_cont(QUANTILE).within_group(measured)]
    elif kind == "cost_per_hour":
        columns = [func.coalesce(func.sum(C.cost), 0.0)]
    else:
        raise ValueError(f"{kind} is not read from completions")
    query = select(group, *columns).where(*where)
    return query.group_by(GROUP_COLUMNS[selection.group_by]) if selection.group_by else query


def _series(selection: Selection, rows: Subquery) -> tuple[ColumnElement[Any] | None, ColumnElement[Any]]:
    """The column of ``rows`` (with a prompt, a backend and a key each) that splits them into the rule's series,
    None for one series, and the ``subject`` each series is named by."""
    columns = {"prompt": rows.c.prompt, "backend": rows.c.backend, "key": rows.c.api_key_id}
    group = columns[selection.group_by] if selection.group_by else None
    return group, group.label("subject") if group is not None else literal("").label("subject")


def backend_cost_query(selection: Selection, where: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """Cost per series of a rule on backends: a completion that failed over after its first config's backend spent
    tokens counts that part under the first backend and the rest under the backend that served it, as usage by
    config counts it (``completion_parts``). ``where`` narrows the completions (window, prompt, key), the rule's
    backend the parts."""
    parts = completion_parts(*where, with_backend=True)
    group, subject = _series(selection, parts)
    query = select(subject, func.coalesce(func.sum(parts.c.cost), 0.0))
    if selection.backend is not None:
        query = query.where(parts.c.backend == selection.backend)
    return query.group_by(group) if group is not None else query


def backend_attempt_query(
    selection: Selection, where: Sequence[ColumnElement[bool]], *, quantile_in_sql: bool
) -> Select[Any]:
    """Error rate or a latency quantile per series of a rule on backends, over attempts (``backend_attempts``): a
    completion that failed over is a failed request of the backend it tried first as well as a request of the one
    that served it, and a latency sample of neither (its record holds the whole request's time, the failed
    attempt's included). ``where`` narrows the completions (window, prompt, key), the rule's backend the attempts.
    """
    attempts = backend_attempts(*where)
    group, subject = _series(selection, attempts)
    narrowed: list[ColumnElement[bool]] = []
    if selection.backend is not None:
        narrowed.append(attempts.c.backend == selection.backend)
    if selection.kind == "error_rate":
        ended = func.coalesce(func.sum(case((attempts.c.status.in_(("ok", "error")), 1), else_=0)), 0)
        failed = func.coalesce(func.sum(case((attempts.c.status == "error", 1), else_=0)), 0)
        query = select(subject, ended, failed).where(*narrowed)
    else:
        measured = attempts.c[QUANTILE_COLUMNS[selection.kind].key]
        narrowed += [attempts.c.status == "ok", measured.is_not(None)]
        if not quantile_in_sql:  # SQLite has no percentile_cont: every value, folded in Python
            return select(subject, measured).where(*narrowed)
        sampled = [func.count(measured), func.percentile_cont(QUANTILE).within_group(measured)]
        query = select(subject, *sampled).where(*narrowed)
    return query.group_by(group) if group is not None else query


def breaker_refusal_query(selection: Selection, where: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """Refusals by an open breaker per series, one per refused attempt: a completion's own (``error_type``, under
    the backend it ended on) and, for one that failed over, its first backend's (``first_error_type``, under
    ``first_backend``), which a working fallback hides from the completion's outcome. So an open breaker on a
    backend counts for it while its requests fail over and answer. Rules per prompt or on everything count attempts
    too, not completions: a request that two open breakers refused in turn is two refusals, and the series of a rule
    per prompt add up to the ones per backend. Completions recorded before migration 0021 count their last
    failure only. ``where`` narrows the completions (window, prompt), the rule's backend the refusals.
    """
    own = select(C.prompt, C.api_key_id, C.backend).where(*where, C.error_type == "circuit_open")
    first = select(C.prompt, C.api_key_id, C.first_backend).where(*where, C.first_error_type == "circuit_open")
    refusals = union_all(own, first).subquery("refusals")
    group, subject = _series(selection, refusals)
    query = select(subject, func.count()).select_from(refusals)
    if selection.backend is not None:
        query = query.where(refusals.c.backend == selection.backend)
    return query.group_by(group) if group is not None else query


def rollback_query(selection: Selection, since: datetime, until: datetime) -> Select[Any]:
    """Rollouts rolled back in the window, per prompt (``rollout_events.at`` finds them)."""
    query = (
        select(*_columns(Prompt.name, func.count()))
        .select_from(RolloutEvent)
        .join(Rollout, Rollout.id == RolloutEvent.rollout_id)
        .join(Prompt, Prompt.id == Rollout.prompt_id)
        .where(RolloutEvent.action == "rolled_back", RolloutEvent.at > since, RolloutEvent.at <= until)
        .group_by(Prompt.name)
    )
    return query.where(Prompt.name == selection.prompt) if selection.prompt is not None else query


def budget_query(selection: Selection) -> Select[Any]:
    columns: list[Any] = [ApiKey.public_id, ApiKeyBudget.monthly_tokens, ApiKeyBudget.monthly_cost]
    query = select(*columns).join(ApiKey, ApiKey.id == ApiKeyBudget.api_key_id).where(ApiKey.revoked_at.is_(None))
    return query.where(ApiKey.public_id == selection.api_key) if selection.api_key is not None else query


def month_spend_query(keys: Sequence[str], since: datetime) -> Select[Any]:
    """Tokens and cost per key since ``since``, counted as the budget guard counts them (cache hits free)."""
    return (
        select(*_columns(C.api_key_id, func.coalesce(func.sum(C.input_tokens + C.output_tokens), 0), func.sum(C.cost)))
        .where(C.api_key_id.in_(keys), C.created_at >= since, C.cached.is_(False))
        .group_by(C.api_key_id)
    )


class AlertLeaseLostError(Exception):
    """Another claim holds the rule's lease now (or the rule is gone): the evaluation changes nothing."""


class AlertRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- rules

    async def add(self, row: AlertRule | AlertIncident) -> None:
        self.session.add(row)
        await self.session.flush()

    async def get(self, rule_id: int, *, for_update: bool = False) -> AlertRule | None:
        query = select(AlertRule).where(AlertRule.id == rule_id)
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def by_name(self, name: str) -> AlertRule | None:
        return (await self.session.execute(select(AlertRule).where(AlertRule.name == name))).scalar_one_or_none()

    async def list_page(self, page: PageRequest) -> Sequence[AlertRule]:
        query = select(AlertRule).order_by(AlertRule.id).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(AlertRule.id > page.after_number)
        return (await self.session.scalars(query)).all()

    async def remove(self, rule: AlertRule) -> None:
        await self.session.execute(delete(AlertRule).where(AlertRule.id == rule.id))

    async def enabled_ids(self) -> Sequence[int]:
        query = select(AlertRule.id).where(AlertRule.enabled.is_(True)).order_by(AlertRule.id)
        return (await self.session.execute(query)).scalars().all()

    async def claim(self, rule_id: int, lease: str, now: datetime, until: datetime) -> bool:
        """Take the rule's lease if nobody holds a live one (one evaluator across replicas).

        ``lease`` is a token new to this claim (the evaluator's name and a random part), so a live lease is
        never taken again, not even by an evaluator of the same name; the evaluation's transaction renews it
        (``renew``) before it changes anything.
        """
        statement = (
            update(AlertRule)
            .where(
                AlertRule.id == rule_id,
                AlertRule.enabled.is_(True),
                or_(AlertRule.lease_owner.is_(None), AlertRule.lease_expires_at < now),
            )
            .values(lease_owner=lease, lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def renew(self, rule_id: int, lease: str, until: datetime) -> bool:
        """Extend the lease if it is still this claim's: the fence of the evaluation's transaction.

        On PostgreSQL the UPDATE also locks the rule's row until the evaluation commits, so no claim comes
        between this and the incidents and events it writes; false when another claim took the rule over.
        """
        statement = (
            update(AlertRule)
            .where(AlertRule.id == rule_id, AlertRule.lease_owner == lease)
            .values(lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def prompt_exists(self, name: str) -> bool:
        return (await self.session.execute(select(Prompt.id).where(Prompt.name == name))).first() is not None

    async def key_exists(self, public_id: str) -> bool:
        return (await self.session.execute(select(ApiKey.id).where(ApiKey.public_id == public_id))).first() is not None

    # -- incidents

    async def open_incidents(self, rule_id: int) -> Sequence[AlertIncident]:
        query = select(AlertIncident).where(AlertIncident.rule_id == rule_id, AlertIncident.status == "firing")
        return (await self.session.execute(query)).scalars().all()

    async def incidents(self, page: PageRequest, *, status: str | None, rule_id: int | None) -> Sequence[AlertIncident]:
        """Newest first."""
        query = select(AlertIncident).order_by(AlertIncident.id.desc()).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(AlertIncident.id < page.after_number)
        if status is not None:
            query = query.where(AlertIncident.status == status)
        if rule_id is not None:
            query = query.where(AlertIncident.rule_id == rule_id)
        return (await self.session.scalars(query)).all()

    async def firing_counts(self) -> dict[tuple[str, str], int]:
        """Firing incidents per rule and kind (the partial index of firing incidents finds them)."""
        query = (
            select(*_columns(AlertIncident.rule_name, AlertIncident.kind, func.count()))
            .where(AlertIncident.status == "firing")
            .group_by(AlertIncident.rule_name, AlertIncident.kind)
        )
        return {(rule, kind): int(count) for rule, kind, count in (await self.session.execute(query)).all()}

    async def rollouts_rolled_back(self) -> int:
        """Rollouts ever rolled back (one row per rollout: a small table)."""
        query = select(func.count()).select_from(Rollout).where(Rollout.status == "rolled_back")
        return int((await self.session.execute(query)).scalar_one())

    async def budget_shares(self, now: datetime) -> dict[str, float]:
        """Every budgeted key's share of its monthly budget."""
        windows = await self._budgets(Selection("budget", group_by="key"), now)
        shares = {key: signal_value("budget", w, window_seconds=1, min_count=1) for key, w in windows.items()}
        return {key: share for key, share in shares.items() if share is not None}

    # -- signals

    async def windows(self, selection: Selection, since: datetime, until: datetime) -> dict[str, Window]:
        """Each series' observations in the window ``(since, until]``; an ungrouped rule has the one series ''."""
        kind = selection.kind
        if kind == "budget":
            return await self._budgets(selection, until)
        if kind == "rollout_rolled_back":
            rows = (await self.session.execute(rollback_query(selection, since, until))).all()
            if selection.group_by is None:
                return {"": Window(events=sum(int(count) for _, count in rows))}
            return {_subject(name): Window(events=int(count)) for name, count in rows}
        in_sql = self.session.get_bind().dialect.name == "postgresql"
        rows = (await self.session.execute(completion_query(selection, since, until, quantile_in_sql=in_sql))).all()
        if kind in QUANTILE_COLUMNS and not in_sql:
            values: dict[str, list[float]] = defaultdict(list)
            for subject, value in rows:
                values[_subject(subject)].append(float(value))
            found = {s: Window(samples=len(v), quantile=quantile(v, QUANTILE)) for s, v in values.items()}
            return found if selection.group_by else {"": found.get("", Window())}
        windows: dict[str, Window] = {}
        for subject, *measured in rows:
            if kind == "error_rate":
                window = Window(requests=int(measured[0] or 0), errors=int(measured[1] or 0))
            elif kind in QUANTILE_COLUMNS:
                samples, value = measured
                window = Window(samples=int(samples), quantile=None if value is None else float(value))
            elif kind == "cost_per_hour":
                window = Window(cost=float(measured[0] or 0.0))
            else:
                window = Window(events=int(measured[0]))
            windows[_subject(subject)] = window
        return windows

    async def _budgets(self, selection: Selection, now: datetime) -> dict[str, Window]:
        """Each budgeted key's share of its budget this month (UTC), one series per key."""
        budgets = (await self.session.execute(budget_query(selection))).all()
        if not budgets:
            return {}
        keys = [key for key, _, _ in budgets]
        spend = {
            key: (int(tokens), float(cost or 0.0))
            for key, tokens, cost in (await self.session.execute(month_spend_query(keys, month_start(now)))).all()
        }
        windows = {}
        for key, token_budget, cost_budget in budgets:
            tokens, cost = spend.get(key, (0, 0.0))
            windows[key] = Window(tokens=tokens, cost=cost, token_budget=token_budget, cost_budget=cost_budget)
        return windows
