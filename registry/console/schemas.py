"""What console pages show (view models) and the forms they send; never ORM objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from registry.console.diff import DiffHunk
from registry.experiments.schemas import ExperimentDefinition, ResultsOut
from registry.lib.schema import Reason

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


@dataclass(frozen=True, slots=True)
class ExperimentResults:
    """The experiment and its results exactly as ``GET /v1/experiments/{key}/results`` returns them."""

    experiment: ExperimentDefinition
    results: ResultsOut
