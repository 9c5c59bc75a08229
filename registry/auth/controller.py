from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.auth.schemas import (
    ApiKeyOut,
    ApiKeyPage,
    AuditEntryOut,
    AuditPage,
    CreateApiKey,
    CreatedApiKey,
    SetRateLimit,
)
from registry.auth.service import ApiKeyService
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.schema import paginate


def provide_key_service(db_session: NamedDependency[AsyncSession]) -> ApiKeyService:
    return ApiKeyService(db_session)


def provide_audit_log(db_session: NamedDependency[AsyncSession]) -> AuditLog:
    return AuditLog(db_session)


class ApiKeyController(Controller):
    path = "/keys"
    tags = ["access"]
    dependencies = {"service": Provide(provide_key_service, sync_to_thread=False)}

    @post(
        "/",
        opt={"scope": Scope.ADMIN},
        operation_id="createApiKey",
        summary="Create an API key",
        description="The response holds the secret key; it is never shown again.",
    )
    async def create_key(
        self,
        data: JSONBody[CreateApiKey],
        service: NamedDependency[ApiKeyService],
        current_actor: NamedDependency[Actor],
    ) -> CreatedApiKey:
        key, secret = await service.create_key(
            data.name,
            data.scopes,
            current_actor,
            expires_at=data.expires_at,
            rate_limit_per_minute=data.rate_limit_per_minute,
        )
        return CreatedApiKey(key=secret, api_key=ApiKeyOut.of(key))

    @get("/", opt={"scope": Scope.ADMIN}, operation_id="listApiKeys", summary="List API keys")
    async def list_keys(
        self,
        service: NamedDependency[ApiKeyService],
        page: NamedDependency[PageRequest],
        include_revoked: FromQuery[bool] = False,
    ) -> ApiKeyPage:
        rows = await service.list_keys(page, include_revoked=include_revoked)
        items, cursor = paginate(rows, page.limit, lambda k: encode_cursor(k.id))
        return ApiKeyPage(items=[ApiKeyOut.of(k) for k in items], next_cursor=cursor)

    @put(
        "/{key_id:str}/rate-limit",
        opt={"scope": Scope.ADMIN},
        operation_id="setApiKeyRateLimit",
        summary="Set a key's requests per minute",
        description="Takes effect on every replica at once; `null` returns the key to the deployment's default.",
    )
    async def set_rate_limit(
        self,
        key_id: FromPath[str],
        data: JSONBody[SetRateLimit],
        service: NamedDependency[ApiKeyService],
        current_actor: NamedDependency[Actor],
    ) -> ApiKeyOut:
        return ApiKeyOut.of(await service.set_rate_limit(key_id, data.per_minute, current_actor))

    @delete(
        "/{key_id:str}",
        opt={"scope": Scope.ADMIN},
        operation_id="revokeApiKey",
        summary="Revoke an API key",
        status_code=200,
    )
    async def revoke_key(
        self, key_id: FromPath[str], service: NamedDependency[ApiKeyService], current_actor: NamedDependency[Actor]
    ) -> ApiKeyOut:
        return ApiKeyOut.of(await service.revoke_key(key_id, current_actor))


class AuditController(Controller):
    path = "/audit"
    tags = ["access"]
    dependencies = {"audit": Provide(provide_audit_log, sync_to_thread=False)}

    @get("/", opt={"scope": Scope.ADMIN}, operation_id="listAudit", summary="Audit log, newest first")
    async def list_audit(
        self,
        audit: NamedDependency[AuditLog],
        page: NamedDependency[PageRequest],
        actor: Annotated[str | None, QueryParameter(name="actor", max_length=128)] = None,
        resource_type: Annotated[str | None, QueryParameter(max_length=32)] = None,
        resource_name: Annotated[str | None, QueryParameter(max_length=256)] = None,
    ) -> AuditPage:
        rows = await audit.list(page, actor=actor, resource_type=resource_type, resource_name=resource_name)
        items, cursor = paginate(rows, page.limit, lambda e: encode_cursor(e.id))
        return AuditPage(items=[AuditEntryOut.of(e) for e in items], next_cursor=cursor)
