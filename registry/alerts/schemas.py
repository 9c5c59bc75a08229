"""Request and response bodies of alert rules and incidents."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, UnsetType

from registry.alerts.models import AlertIncident, AlertRule
from registry.lib.schema import Description, Input, Output, ResourceName

Kind = Literal[
    "error_rate", "latency_p95", "ttft_p95", "cost_per_hour", "breaker_open", "budget", "rollout_rolled_back"
]
Grouping = Literal["prompt", "backend", "key"]
Threshold = Annotated[
    float, msgspec.Meta(gt=0, le=1e12, description="Fires when the value reaches it (the kind says the unit).")
]
ResolveThreshold = Annotated[
    float,
    # Above 0: no value falls below 0, so a firing series of a rule resolving below 0 never cleared while it had data.
    msgspec.Meta(gt=0, le=1e12, description="Resolves when the value falls below it (hysteresis; default: threshold)."),
]
WindowSeconds = Annotated[int, msgspec.Meta(ge=10, le=7 * 86400, description="The window the value is measured over.")]
ForSeconds = Annotated[int, msgspec.Meta(ge=0, le=86400, description="How long the value must hold before firing.")]
MinCount = Annotated[
    int, msgspec.Meta(ge=1, le=1_000_000, description="Completions a window needs before a rate or p95 is judged.")
]
BackendName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
KeyId = Annotated[str, msgspec.Meta(min_length=1, max_length=16, description="An API key's public id.")]


class RuleScope(Input):
    """What the rule watches; a field left out means all."""

    prompt: ResourceName | None = None
    backend: BackendName | None = None
    key: KeyId | None = None


class CreateRule(Input):
    name: ResourceName
    kind: Kind
    threshold: Threshold
    window_seconds: WindowSeconds = 300
    for_seconds: ForSeconds = 0
    resolve_threshold: ResolveThreshold | None = None
    min_count: MinCount = 10
    scope: RuleScope = msgspec.field(default_factory=RuleScope)
    # Left out: per key for budgets, per backend for breakers, per prompt for rollbacks, else one series.
    group_by: Grouping | UnsetType | None = UNSET
    enabled: bool = True
    description: Description = ""


class UpdateRule(Input):
    """Fields left out are unchanged; the kind and name are not changed (create another rule)."""

    threshold: Threshold | UnsetType = UNSET
    window_seconds: WindowSeconds | UnsetType = UNSET
    for_seconds: ForSeconds | UnsetType = UNSET
    resolve_threshold: ResolveThreshold | UnsetType | None = UNSET
    min_count: MinCount | UnsetType = UNSET
    scope: RuleScope | UnsetType = UNSET
    group_by: Grouping | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET
    description: Description | UnsetType = UNSET


class ScopeOut(Output):
    prompt: str | None
    backend: str | None
    key: str | None


class RuleOut(Output):
    id: int
    name: str
    kind: str
    threshold: float
    resolve_threshold: float | None
    window_seconds: int
    for_seconds: int
    min_count: int
    scope: ScopeOut
    group_by: str | None
    enabled: bool
    description: str
    last_evaluated_at: datetime | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str

    @classmethod
    def of(cls, rule: AlertRule) -> RuleOut:
        return cls(
            id=rule.id,
            name=rule.name,
            kind=rule.kind,
            threshold=rule.threshold,
            resolve_threshold=rule.resolve_threshold,
            window_seconds=rule.window_seconds,
            for_seconds=rule.for_seconds,
            min_count=rule.min_count,
            scope=ScopeOut(prompt=rule.prompt, backend=rule.backend, key=rule.api_key),
            group_by=rule.group_by,
            enabled=rule.enabled,
            description=rule.description,
            last_evaluated_at=rule.last_evaluated_at,
            created_at=rule.created_at,
            created_by=rule.created_by,
            updated_at=rule.updated_at,
            updated_by=rule.updated_by,
        )


class RulePage(Output):
    items: list[RuleOut]
    next_cursor: str | None


class IncidentOut(Output):
    id: int
    rule_id: int | None  # None once the rule is deleted
    rule: str
    kind: str
    subject: str  # the series: '' for the rule's whole scope, else the prompt, backend or key it is grouped by
    status: str  # firing, resolved
    value: float  # the value that fired
    peak_value: float
    last_value: float | None
    threshold: float
    started_at: datetime
    resolved_at: datetime | None
    resolution: str | None  # cleared, rule_disabled, rule_deleted, rule_changed

    @classmethod
    def of(cls, incident: AlertIncident) -> IncidentOut:
        return cls(
            id=incident.id,
            rule_id=incident.rule_id,
            rule=incident.rule_name,
            kind=incident.kind,
            subject=incident.subject,
            status=incident.status,
            value=incident.value,
            peak_value=incident.peak_value,
            last_value=incident.last_value,
            threshold=incident.threshold,
            started_at=incident.started_at,
            resolved_at=incident.resolved_at,
            resolution=incident.resolution,
        )


class IncidentPage(Output):
    items: list[IncidentOut]
    next_cursor: str | None
