"""What console pages show (view models) and the forms they send; never ORM objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec

from registry.auth.models import ApiKey
from registry.auth.schemas import ApiKeyOut
from registry.console.diff import DiffHunk
from registry.console.evals import GateVerdictView
from registry.console.usage import UsageFigures
from registry.evals.schemas import GateOut
from registry.experiments.schemas import ExperimentDefinition
from registry.guards.report import GuardCount
from registry.lib.schema import Reason
from registry.rollouts.schemas import RolloutOut
from registry.webhooks.schemas import DeliveryOut

# -- forms (every one carries the session's CSRF token, checked before the handler runs)


class SignInForm(msgspec.Struct, kw_only=True):
    api_key: Annotated[str, msgspec.Meta(max_length=200)] = ""
    csrf: str = ""
    next: Annotated[str, msgspec.Meta(max_length=2000)] = ""  # the console page to show after sign-in


class SignOutForm(msgspec.Struct, kw_only=True):
    csrf: str = ""


class PromoteForm(msgspec.Struct, kw_only=True):
    csrf: str = ""
    to: Literal["staging", "production", "archived"]
    expected_current: Annotated[str, msgspec.Meta(max_length=12, pattern=r"^[0-9]*$")] = ""
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    override_gate: Annotated[str, msgspec.Meta(max_length=1000)] = ""  # an admin's reason to pass a failed gate

    def expected(self) -> int | None:
        """The version the page showed holding the state; empty when it showed none."""
        return int(self.expected_current) if self.expected_current else None


class RollbackForm(msgspec.Struct, kw_only=True):
    csrf: str = ""
    version: Annotated[str, msgspec.Meta(max_length=12, pattern=r"^[0-9]+$")]
    expected_current: Annotated[str, msgspec.Meta(max_length=12, pattern=r"^[0-9]*$")] = ""
    reason: Reason

    def expected(self) -> int | None:
        return int(self.expected_current) if self.expected_current else None


# -- pages


@dataclass(frozen=True, slots=True)
class PromptRow:
    name: str
    description: str
    tags: list[str]
    latest_version: int
    production: int | None
    staging: int | None
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True)
class PromptList:
    rows: list[PromptRow]
    next_cursor: str | None
    prefix: str
    tag: str


@dataclass(frozen=True, slots=True)
class VersionRow:
    number: int
    state: str
    kind: str
    author: str
    created_at: datetime
    commit_message: str
    config: str | None  # "name@version"


@dataclass(frozen=True, slots=True)
class HistoryRow:
    version: int
    action: str
    from_state: str
    to_state: str
    reason: str | None
    actor: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PromptPage:
    name: str
    description: str
    tags: list[str]
    latest_version: int
    updated_at: datetime
    updated_by: str
    production: int | None
    staging: int | None
    versions: list[VersionRow]
    history: list[HistoryRow]
    rollback_candidates: list[int]
    gates: list[GateOut] = field(default_factory=list)  # the states gated on evaluation evidence
    rollouts: list[RolloutOut] = field(default_factory=list)  # the newest first
    next_versions: str | None = None  # the cursor of the older versions past this page, if any
    older_versions: bool = False  # this page starts past the newest versions
    next_history: str | None = None  # the cursor of the older changes past this page's history, if any
    older_history: bool = False  # this page's history starts past the newest changes
    next_rollouts: str | None = None  # the cursor of the older rollouts past this page's, if any
    older_rollouts: bool = False  # this page's rollouts start past the newest
    newest_rollout: RolloutOut | None = None  # the prompt's newest rollout, on every page (it may hold production)

    def holds(self, number: int, state: str) -> bool:
        """Whether version ``number`` is in ``state`` as this page reads it (an archived version past this page's
        rows is taken to be): a notice of a change someone has undone since is not shown again on a reload."""
        if state == "production":
            return self.production == number
        if state == "staging":
            return self.staging == number
        return all(v.state == state for v in self.versions if v.number == number)


@dataclass(frozen=True, slots=True)
class FieldChangeRow:
    field: str
    before: str
    after: str


def as_text(value: Any) -> str:
    """A config or schema value as readable text: strings as they are, the rest as JSON."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class DiffPage:
    name: str
    from_version: int
    to_version: int
    version_numbers: list[int]
    kind_changed: bool
    hunks: list[DiffHunk]
    schema_changes: list[FieldChangeRow]
    config_from: str | None
    config_to: str | None
    config_changes: list[FieldChangeRow]


@dataclass(frozen=True, slots=True)
class PlannedChange:
    version: int
    from_state: str
    to_state: str
    action: str


@dataclass(frozen=True, slots=True)
class PromotionPlan:
    """What a promote or rollback would change, shown before it is confirmed."""

    name: str
    action: Literal["promote", "rollback"]
    version: int | None
    to: str
    expected_current: int | None
    changes: list[PlannedChange]
    problem: str | None = None  # why it cannot be done now (the form is not offered)
    candidates: list[int] = field(default_factory=list)  # rollback: earlier production versions
    gate: GateVerdictView | None = None  # promote into a gated state: whether the version meets the gate now
    gate_refused: bool = False  # the promotion was just refused by that gate
    reason: str = ""  # what was typed when the gate refused it, shown again in the form
    override_gate: str = ""
    form_error: str | None = None  # what was wrong with the form just sent, shown above it


@dataclass(frozen=True, slots=True)
class Conflict:
    """Someone moved the state after the page was read: who, when, and what holds it now."""

    name: str
    state: str
    expected: int | None
    current: int | None
    moved_by: str | None
    moved_at: datetime | None
    reason: str | None
    retry_url: str


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    created_at: datetime
    actor: str
    action: str
    resource_type: str
    resource_name: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class AuditList:
    rows: list[AuditRow]
    next_cursor: str | None
    actor: str
    resource_type: str
    resource_name: str


@dataclass(frozen=True, slots=True)
class ExperimentList:
    rows: list[ExperimentDefinition]
    next_cursor: str | None
    status: str


# -- usage, API keys and webhooks


class CreateKeyForm(msgspec.Struct, kw_only=True):
    """A new API key; one checkbox per scope (a form sends a lone checkbox as a string, not a list)."""

    csrf: str = ""
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    scope_read: str = ""
    scope_write: str = ""
    scope_promote: str = ""
    scope_analyze: str = ""
    scope_admin: str = ""
    rate_limit_per_minute: Annotated[str, msgspec.Meta(max_length=12)] = ""

    def scopes(self) -> list[str]:
        chosen = {"read": self.scope_read, "write": self.scope_write, "promote": self.scope_promote}
        chosen |= {"analyze": self.scope_analyze, "admin": self.scope_admin}
        return [scope for scope, ticked in chosen.items() if ticked]


class RevokeKeyForm(msgspec.Struct, kw_only=True):
    csrf: str = ""


class RateLimitForm(msgspec.Struct, kw_only=True):
    csrf: str = ""
    per_minute: Annotated[str, msgspec.Meta(max_length=12)] = ""  # empty: the deployment's default


class BudgetForm(msgspec.Struct, kw_only=True):
    csrf: str = ""
    monthly_tokens: Annotated[str, msgspec.Meta(max_length=20)] = ""  # empty: no limit
    monthly_cost: Annotated[str, msgspec.Meta(max_length=20)] = ""


class RedeliverForm(msgspec.Struct, kw_only=True):
    csrf: str = ""


class WebhookEnabledForm(msgspec.Struct, kw_only=True):
    csrf: str = ""
    enabled: Literal["true", "false"]


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """A key's monthly budget and the share of it used this month."""

    key: str
    name: str
    monthly_tokens: int | None
    monthly_cost: float | None
    used_tokens: int
    used_cost: float
    month_start: datetime

    @property
    def token_share(self) -> float | None:
        return None if not self.monthly_tokens else self.used_tokens / self.monthly_tokens

    @property
    def cost_share(self) -> float | None:
        return None if not self.monthly_cost else self.used_cost / self.monthly_cost


@dataclass(frozen=True, slots=True)
class UsagePage:
    by: str
    days: int
    first: date
    last: date
    figures: UsageFigures
    truncated: bool
    budgets: list[BudgetRow] | None  # None: the key may not read budgets (admin only, as on the API)
    guards: GuardsSummary


@dataclass(frozen=True, slots=True)
class GuardsSummary:
    """What config guards did in the period: outcomes per config and guard, over ``completions`` guarded ones."""

    counts: list[GuardCount]
    completions: int
    truncated: bool  # more guarded completions than counted: these are the newest


class KeyRow(ApiKeyOut, kw_only=True):
    """A key as the API shows it, with its budget and spend (None: no budget, or the key is revoked)."""

    budget: BudgetRow | None = None

    @classmethod
    def with_budget(cls, key: ApiKey, budget: BudgetRow | None) -> KeyRow:
        return cls(**msgspec.structs.asdict(ApiKeyOut.of(key)), budget=budget)


@dataclass(frozen=True, slots=True)
class KeysPage:
    rows: list[KeyRow]
    next_cursor: str | None
    include_revoked: bool


@dataclass(frozen=True, slots=True)
class WebhookRow:
    id: int
    url: str
    events: list[str]
    description: str
    created_at: datetime
    created_by: str
    enabled: bool = True
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    consecutive_failures: int = 0


@dataclass(frozen=True, slots=True)
class WebhookPage:
    webhook: WebhookRow
    deliveries: list[DeliveryOut]
    next_cursor: str | None
    status: str
