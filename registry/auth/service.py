from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.keys import Scope, generate_key, hash_secret
from registry.auth.models import ApiKey
from registry.auth.principal import Actor
from registry.auth.repository import ApiKeyRepository
from registry.db.base import utcnow
from registry.lib.changes import Change, record_change
from registry.lib.errors import InvalidInputError, NotFoundError
from registry.lib.pagination import PageRequest


class ApiKeyNotFoundError(NotFoundError):
    """No API key has this id."""

    type = "api_key_not_found"
    title = "API key not found"


def key_snapshot(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.public_id,
        "name": key.name,
        "scopes": key.scopes,
        "revoked": key.revoked_at is not None,
        "rate_limit_per_minute": key.rate_limit_per_minute,
    }


class ApiKeyService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.repository = ApiKeyRepository(session)
        self.audit = AuditLog(session)

    async def create_key(
        self,
        name: str,
        scopes: Sequence[Scope],
        actor: Actor,
        *,
        expires_at: datetime | None = None,
        rate_limit_per_minute: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; the full secret is returned here and never again."""
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidInputError("expires_at is in the past", errors=[])
        public_id, secret, full_key = generate_key()
        key = await self.repository.add(
            ApiKey(
                public_id=public_id,
                name=name,
                secret_hash=hash_secret(secret),
                scopes=sorted({s.value for s in scopes}),
                created_by=actor.name,
                expires_at=expires_at,
                rate_limit_per_minute=rate_limit_per_minute,
            )
        )
        await self.audit.record(actor, "api_key.create", "api_key", public_id, after=key_snapshot(key))
        return key, full_key

    async def list_keys(self, page: PageRequest, *, include_revoked: bool) -> Sequence[ApiKey]:
        return await self.repository.list(page, include_revoked=include_revoked)

    async def set_rate_limit(self, public_id: str, per_minute: int | None, actor: Actor) -> ApiKey:
        """Change a key's requests per minute (None: the default); every replica drops its cached copy."""
        key = await self._get(public_id)
        before = key_snapshot(key)
        key.rate_limit_per_minute = per_minute
        await self.session.flush()
        await self.audit.record(
            actor, "api_key.rate_limit", "api_key", public_id, before=before, after=key_snapshot(key)
        )
        record_change(self.session, Change("api_key", public_id, "rate_limit"))
        return key

    async def _get(self, public_id: str) -> ApiKey:
        key = await self.repository.get_by_public_id(public_id)
        if key is None:
            raise ApiKeyNotFoundError(f"no API key has id '{public_id}'")
        return key

    async def revoke_key(self, public_id: str, actor: Actor) -> ApiKey:
        key = await self._get(public_id)
        if key.revoked_at is None:
            before = key_snapshot(key)
            key.revoked_at = utcnow()
            key.revoked_by = actor.name
            await self.session.flush()
            await self.audit.record(
                actor, "api_key.revoke", "api_key", public_id, before=before, after=key_snapshot(key)
            )
            record_change(self.session, Change("api_key", public_id, "revoked"))
        return key

    async def any_keys(self) -> bool:
        return await self.repository.any_exist()
