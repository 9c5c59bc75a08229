"""Request and response bodies shared by prompts and model configs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from registry.lib.promotion import State, StateChange
from registry.lib.schema import Description, Input, Output, Reason, ResourceName, Tags
from registry.lib.versioned import Promotion, TransitionMixin, VersionedResourceMixin

VersionNumber = Annotated[int, msgspec.Meta(ge=1, le=2_147_483_647)]
Label = Literal["production", "staging", "latest"]


class CreateResource(Input):
    name: ResourceName
    description: Description = ""
    tags: Tags = msgspec.field(default_factory=list)


class UpdateResource(Input):
    description: Description | None = None
    tags: Tags | None = None


class ResourceOut(Output):
    name: str
    description: str
    tags: list[str]
    latest_version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str

    @classmethod
    def of(cls, resource: VersionedResourceMixin) -> ResourceOut:
        return cls(
            name=resource.name,
            description=resource.description,
            tags=list(resource.tags),
            latest_version=resource.latest_version,
            created_at=resource.created_at,
            created_by=resource.created_by,
            updated_at=resource.updated_at,
            updated_by=resource.updated_by,
        )


class ResourcePage(Output):
    items: list[ResourceOut]
    next_cursor: str | None


class PromoteRequest(Input):
    to: Literal["staging", "production", "archived"]
    expected_current: VersionNumber | UnsetType | None = UNSET
    reason: Reason | None = None
    # An admin promotes although the state's evaluation gate refuses, saying why (kept in history and audit).
    override_gate: Reason | None = None


class RollbackRequest(Input):
    reason: Reason
    version: VersionNumber | None = None
    expected_current: VersionNumber | UnsetType | None = UNSET


class StateChangeOut(Output):
    version: int
    from_state: State
    to_state: State
    action: str

    @classmethod
    def of(cls, change: StateChange) -> StateChangeOut:
        return cls(version=change.number, from_state=change.from_state, to_state=change.to_state, action=change.action)


class PromotionOut(Output):
    name: str
    version: int
    state: State
    changed: bool
    changes: list[StateChangeOut]

    @classmethod
    def of(cls, name: str, promotion: Promotion[Any]) -> PromotionOut:
        return cls(
            name=name,
            version=promotion.version.number,
            state=State(promotion.version.state),
            changed=bool(promotion.changes),
            changes=[StateChangeOut.of(c) for c in promotion.changes],
        )


class TransitionOut(Output):
    id: int
    version: int
    from_state: str
    to_state: str
    action: str
    reason: str | None
    actor: str
    actor_key_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: TransitionMixin) -> TransitionOut:
        return cls(
            id=row.id,
            version=row.version_number,
            from_state=row.from_state,
            to_state=row.to_state,
            action=row.action,
            reason=row.reason,
            actor=row.actor,
            actor_key_id=row.actor_key_id,
            created_at=row.created_at,
        )


class HistoryPage(Output):
    items: list[TransitionOut]
    next_cursor: str | None
