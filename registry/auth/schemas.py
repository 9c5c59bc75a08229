from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from registry.auth.keys import Scope
from registry.auth.models import ApiKey, AuditEntry
from registry.lib.schema import Input, Output

KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(?!\n)$")]
MAX_REQUESTS_PER_MINUTE = 10_000_000
RequestsPerMinute = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        le=MAX_REQUESTS_PER_MINUTE,
        description="Requests per minute this key may make; 0 is unlimited; null uses the deployment's default.",
    ),
]


class CreateApiKey(Input):
    name: KeyName
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)]
    expires_at: datetime | None = None
    rate_limit_per_minute: RequestsPerMinute | None = None


class SetRateLimit(Input):
    per_minute: RequestsPerMinute | None


class ApiKeyOut(Output):
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rate_limit_per_minute: int | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(
            id=key.public_id,
            name=key.name,
            scopes=list(key.scopes),
            created_at=key.created_at,
            created_by=key.created_by,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
            rate_limit_per_minute=key.rate_limit_per_minute,
        )


class CreatedApiKey(Output):
    key: str
    api_key: ApiKeyOut


class ApiKeyPage(Output):
    items: list[ApiKeyOut]
    next_cursor: str | None


class AuditEntryOut(Output):
    id: int
    created_at: datetime
    actor: str
    actor_key_id: str | None
    action: str
    resource_type: str
    resource_name: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        return cls(
            id=entry.id,
            created_at=entry.created_at,
            actor=entry.actor,
            actor_key_id=entry.actor_key_id,
            action=entry.action,
            resource_type=entry.resource_type,
            resource_name=entry.resource_name,
            before=entry.before,
            after=entry.after,
            request_id=entry.request_id,
        )


class AuditPage(Output):
    items: list[AuditEntryOut]
    next_cursor: str | None
