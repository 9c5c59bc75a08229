"""Alert rules (validated, audited) and their evaluation: incidents opened and closed with their events.

A firing or a resolution is an incident row, an ``alert.firing``/``alert.resolved`` outbox event (a
webhook) and an audit entry, all flushed in the caller's transaction: none exists without the others.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from msgspec import UNSET
from sqlalchemy.ext.asyncio import AsyncSession

from registry.alerts.evaluation import INACTIVE, Condition, SeriesState, Transition, signal_value, step
from registry.alerts.models import AlertIncident, AlertRule
from registry.alerts.repository import AlertLeaseLostError, AlertRepository, Selection
from registry.alerts.schemas import CreateRule, RuleScope, UpdateRule
from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.db.base import utcnow
from registry.lib.errors import ConflictError, FieldError, InvalidInputError, NotFoundError
from registry.lib.pagination import PageRequest
from registry.outbox.events import emit_event

EVALUATOR = Actor("alert-evaluator")

# The scope fields each kind's signal can be narrowed by (and grouped by).
SCOPES: dict[str, frozenset[str]] = {
    "error_rate": frozenset({"prompt", "backend", "key"}),
    "latency_p95": frozenset({"prompt", "backend", "key"}),
    "ttft_p95": frozenset({"prompt", "backend", "key"}),
    "cost_per_hour": frozenset({"prompt", "backend", "key"}),
    "breaker_open": frozenset({"prompt", "backend"}),
    "budget": frozenset({"key"}),
    "rollout_rolled_back": frozenset({"prompt"}),
}
DEFAULT_GROUPING = {"budget": "key", "breaker_open": "backend", "rollout_rolled_back": "prompt"}
MAX_THRESHOLD = {"error_rate": 1.0, "budget": 10.0}
COUNTED = ("breaker_open", "rollout_rolled_back")


class AlertRuleNotFoundError(NotFoundError):
    """No alert rule has this id."""

    type = "alert_rule_not_found"
    title = "Alert rule not found"


class AlertRuleExistsError(ConflictError):
    """An alert rule with this name already exists."""

    type = "alert_rule_exists"
    title = "Alert rule already exists"


def _scope_values(scope: RuleScope) -> dict[str, str | None]:
    return {"prompt": scope.prompt, "backend": scope.backend, "key": scope.key}


def rule_problems(rule: AlertRule, backends: Collection[str]) -> list[FieldError]:
    """What is wrong with a rule as a whole (the schema checked each field alone)."""
    problems = []
    allowed = SCOPES[rule.kind]
    for field, value in (("prompt", rule.prompt), ("backend", rule.backend), ("key", rule.api_key)):
        if value is not None and field not in allowed:
            problems.append(
                FieldError(f"scope.{field}", f"a {rule.kind} rule is scoped by {', '.join(sorted(allowed))} only")
            )
    if rule.backend is not None and rule.backend not in backends:
        known = ", ".join(sorted(backends)) or "none"
        problems.append(FieldError("scope.backend", f"no backend named '{rule.backend}' (configured: {known})"))
    if rule.group_by is not None and rule.group_by not in allowed:
        problems.append(FieldError("group_by", f"a {rule.kind} rule is grouped by {', '.join(sorted(allowed))} only"))
    if rule.kind == "budget" and rule.group_by != "key":
        problems.append(FieldError("group_by", "a budget rule has one series per key: group_by 'key'"))
    ceiling = MAX_THRESHOLD.get(rule.kind)
    if ceiling is not None and rule.threshold > ceiling:
        problems.append(FieldError("threshold", f"a {rule.kind} threshold is a fraction, at most {ceiling:g}"))
    if rule.kind in COUNTED and rule.threshold < 1:
        problems.append(FieldError("threshold", f"a {rule.kind} threshold counts events: at least 1"))
    if rule.resolve_threshold is not None and rule.resolve_threshold > rule.threshold:
        problems.append(FieldError("resolve_threshold", "must not be above threshold (it resolves below it)"))
    return problems


def incident_data(rule: AlertRule, incident: AlertIncident) -> dict[str, Any]:
    """The body of an alert's webhook event and audit entry."""
    return {
        "incident_id": incident.id,
        "rule_id": rule.id,
        "rule": rule.name,
        "kind": rule.kind,
        "subject": incident.subject,
        "group_by": rule.group_by,
        "scope": {"prompt": rule.prompt, "backend": rule.backend, "key": rule.api_key},
        "status": incident.status,
        "value": incident.value,
        "peak_value": incident.peak_value,
        "last_value": incident.last_value,
        "threshold": incident.threshold,
        "window_seconds": rule.window_seconds,
        "started_at": incident.started_at.isoformat(),
        "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
        "resolution": incident.resolution,
    }


class AlertService:
    def __init__(self, session: AsyncSession, backends: Collection[str]) -> None:
        self.session = session
        self.repository = AlertRepository(session)
        self.audit = AuditLog(session)
        self.backends = backends

    # -- rules

    async def require(self, rule_id: int, *, for_update: bool = False) -> AlertRule:
        rule = await self.repository.get(rule_id, for_update=for_update)
        if rule is None:
            raise AlertRuleNotFoundError(f"no alert rule with id {rule_id}")
        return rule

    async def list_rules(self, page: PageRequest) -> Sequence[AlertRule]:
        return await self.repository.list_page(page)

    async def incidents(self, page: PageRequest, *, status: str | None, rule_id: int | None) -> Sequence[AlertIncident]:
        return await self.repository.incidents(page, status=status, rule_id=rule_id)

    async def create(self, data: CreateRule, actor: Actor) -> AlertRule:
        if await self.repository.by_name(data.name) is not None:
            raise AlertRuleExistsError(f"an alert rule named '{data.name}' exists")
        scope = _scope_values(data.scope)
        rule = AlertRule(
            name=data.name,
            description=data.description,
            kind=data.kind,
            threshold=data.threshold,
            resolve_threshold=data.resolve_threshold,
            window_seconds=data.window_seconds,
            for_seconds=data.for_seconds,
            min_count=data.min_count,
            prompt=scope["prompt"],
            backend=scope["backend"],
            api_key=scope["key"],
            group_by=DEFAULT_GROUPING.get(data.kind) if data.group_by is UNSET else data.group_by,
            enabled=data.enabled,
            pending={},
            created_by=actor.name,
            updated_by=actor.name,
        )
        await self._validate(rule)
        await self.repository.add(rule)  # one created meanwhile under the same name: the unique key's 409
        await self.audit.record(actor, "alert_rule.create", "alert_rule", rule.name, after=self._snapshot(rule))
        return rule

    async def update(self, rule_id: int, data: UpdateRule, actor: Actor) -> AlertRule:
        rule = await self.require(rule_id, for_update=True)
        before = self._snapshot(rule)
        regrouped = (data.scope is not UNSET and _scope_values(data.scope) != before["scope"]) or (
            data.group_by is not UNSET and data.group_by != rule.group_by
        )
        if regrouped:
            # Its firing incidents are of series the rule no longer has (another prompt, another grouping): resolved
            # now, described as they fired, rather than merged into the new series or resolved later as cleared.
            await self._close_all(rule, "rule_changed", actor)
        for field in ("threshold", "window_seconds", "for_seconds", "resolve_threshold", "min_count", "description"):
            value = getattr(data, field)
            if value is not UNSET:
                setattr(rule, field, value)
        if data.scope is not UNSET:
            scope = _scope_values(data.scope)
            rule.prompt, rule.backend, rule.api_key = scope["prompt"], scope["backend"], scope["key"]
        if data.group_by is not UNSET:
            rule.group_by = data.group_by
        await self._validate(rule)
        if data.enabled is not UNSET and data.enabled != rule.enabled:
            rule.enabled = data.enabled
            if not rule.enabled:
                await self._close_all(rule, "rule_disabled", actor)
        if regrouped:
            rule.pending = {}  # other series now: waits start again
        rule.updated_at = utcnow()
        rule.updated_by = actor.name
        await self.session.flush()
        await self.audit.record(
            actor, "alert_rule.update", "alert_rule", rule.name, before=before, after=self._snapshot(rule)
        )
        return rule

    async def delete(self, rule_id: int, actor: Actor) -> None:
        rule = await self.require(rule_id, for_update=True)
        await self._close_all(rule, "rule_deleted", actor)
        await self.audit.record(actor, "alert_rule.delete", "alert_rule", rule.name, before=self._snapshot(rule))
        await self.repository.remove(rule)

    async def _validate(self, rule: AlertRule) -> None:
        problems = rule_problems(rule, self.backends)
        if rule.prompt is not None and not await self.repository.prompt_exists(rule.prompt):
            problems.append(FieldError("scope.prompt", f"no prompt named '{rule.prompt}'"))
        if rule.api_key is not None and not await self.repository.key_exists(rule.api_key):
            problems.append(FieldError("scope.key", f"no API key with id '{rule.api_key}'"))
        if problems:
            raise InvalidInputError("the alert rule is invalid", errors=problems)

    @staticmethod
    def _snapshot(rule: AlertRule) -> dict[str, Any]:
        return {
            "kind": rule.kind,
            "threshold": rule.threshold,
            "resolve_threshold": rule.resolve_threshold,
            "window_seconds": rule.window_seconds,
            "for_seconds": rule.for_seconds,
            "min_count": rule.min_count,
            "scope": {"prompt": rule.prompt, "backend": rule.backend, "key": rule.api_key},
            "group_by": rule.group_by,
            "enabled": rule.enabled,
        }

    # -- evaluation

    async def evaluate(
        self, rule_id: int, now: datetime, *, lease: str, lease_until: datetime
    ) -> list[tuple[str, Transition]]:
        """Evaluate the rule at ``now``: the series that fired or resolved, in order.

        Only while ``lease`` is still the rule's: renewed first, in this transaction, so an evaluator that
        stalled past its lease and was taken over (even by one of its own name) raises ``AlertLeaseLostError``
        before it opens or closes an incident or enqueues a notification, and the caller rolls back.
        """
        if not await self.repository.renew(rule_id, lease, lease_until):
            raise AlertLeaseLostError(f"alert rule {rule_id} is no longer held by lease {lease}")
        rule = await self.repository.get(rule_id, for_update=True)
        if rule is None or not rule.enabled:
            return []
        since = now - timedelta(seconds=rule.window_seconds)
        windows = await self.repository.windows(Selection.of(rule), since, now)
        firing = {incident.subject: incident for incident in await self.repository.open_incidents(rule.id)}
        condition = Condition(rule.threshold, rule.resolve_threshold, rule.for_seconds)
        pending: dict[str, str] = {}
        done: list[tuple[str, Transition]] = []
        for subject in sorted(set(windows) | set(firing) | set(rule.pending)):
            window = windows.get(subject)
            value = (
                None
                if window is None
                else signal_value(rule.kind, window, window_seconds=rule.window_seconds, min_count=rule.min_count)
            )
            incident = firing.get(subject)
            if incident is not None:
                state = SeriesState("firing", incident.started_at)
            elif subject in rule.pending:
                state = SeriesState("pending", datetime.fromisoformat(rule.pending[subject]))
            else:
                state = INACTIVE
            state, transition = step(state, value, condition, now)
            if transition == "fire" and value is not None:
                await self._fire(rule, subject, value, now)
            elif transition == "resolve" and incident is not None:
                await self._resolve(rule, incident, value, now, "cleared", EVALUATOR)
            elif incident is not None:
                incident.last_value = value
                if value is not None and value > incident.peak_value:
                    incident.peak_value = value
            if state.status == "pending" and state.since is not None:
                pending[subject] = state.since.isoformat()
            if transition is not None:
                done.append((subject, transition))
        rule.pending = pending
        rule.last_evaluated_at = now
        await self.session.flush()
        return done

    async def _fire(self, rule: AlertRule, subject: str, value: float, now: datetime) -> None:
        incident = AlertIncident(
            rule_id=rule.id,
            rule_name=rule.name,
            kind=rule.kind,
            subject=subject,
            status="firing",
            value=value,
            peak_value=value,
            last_value=value,
            threshold=rule.threshold,
            started_at=now,
        )
        await self.repository.add(incident)
        data = incident_data(rule, incident)
        await emit_event(self.session, "alert.firing", rule.name, data, EVALUATOR)
        await self.audit.record(EVALUATOR, "alert.firing", "alert_rule", rule.name, after=data)

    async def _resolve(
        self, rule: AlertRule, incident: AlertIncident, value: float | None, now: datetime, why: str, actor: Actor
    ) -> None:
        incident.status = "resolved"
        incident.resolved_at = now
        incident.last_value = value
        incident.resolution = why
        await self.session.flush()
        data = incident_data(rule, incident)
        await emit_event(self.session, "alert.resolved", rule.name, data, actor)
        await self.audit.record(actor, "alert.resolved", "alert_rule", rule.name, after=data)

    async def _close_all(self, rule: AlertRule, why: str, actor: Actor) -> None:
        """Resolve every firing incident of a rule that stops being evaluated, so no receiver waits on it."""
        now = utcnow()
        for incident in await self.repository.open_incidents(rule.id):
            await self._resolve(rule, incident, incident.last_value, now, why, actor)
        rule.pending = {}
