from __future__ import annotations

from typing import Annotated

from litestar import Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.configs.schemas import ConfigDiff, ConfigVersionOut, ConfigVersionPage, CreateConfigVersion
from registry.configs.service import ConfigService
from registry.deps import provide_resource_name
from registry.lib.errors import FieldError, InvalidInputError
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.promotion import State
from registry.lib.schema import paginate
from registry.lib.versioned_controller import VersionedResourceController
from registry.lib.versioned_schemas import (
    Label,
)
from registry.runtime import Runtime


def provide_config_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ConfigService:
    return ConfigService(db_session, backends=runtime.settings.backends.keys())


class ConfigController(VersionedResourceController):
    path = "/configs"
    tags = ["model configs"]
    dependencies = {
        "service": Provide(provide_config_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @get("/{name:str}", opt={"scope": Scope.READ}, operation_id="resolveConfig", summary="Resolve by label or version")
    async def resolve_config(
        self,
        resource_name: NamedDependency[str],
        service: NamedDependency[ConfigService],
        label: FromQuery[Label | None] = None,
        version: Annotated[int | None, QueryParameter(ge=1)] = None,
    ) -> ConfigVersionOut:
        if label is not None and version is not None:
            raise InvalidInputError(
                "give a label or a version, not both", errors=[FieldError("version", "cannot be combined with label")]
            )
        _, row = await service.workflow.resolve(resource_name, version=version, label=label)
        return ConfigVersionOut.of(resource_name, row)

    @post(
        "/{name:str}/versions",
        opt={"scope": Scope.WRITE},
        operation_id="createConfigVersion",
        summary="Create a version (201), or get the newest if identical (200)",
        responses={
            200: ResponseSpec(ConfigVersionOut, description="Identical to the newest version, which is returned.")
        },
    )
    async def create_version(
        self,
        resource_name: NamedDependency[str],
        data: JSONBody[CreateConfigVersion],
        service: NamedDependency[ConfigService],
        current_actor: NamedDependency[Actor],
    ) -> Response[ConfigVersionOut]:
        version, created = await service.create_version(resource_name, data, current_actor)
        return Response(ConfigVersionOut.of(resource_name, version), status_code=201 if created else 200)

    @get("/{name:str}/versions", opt={"scope": Scope.READ}, operation_id="listConfigVersions", summary="List versions")
    async def list_versions(
        self,
        resource_name: NamedDependency[str],
        service: NamedDependency[ConfigService],
        page: NamedDependency[PageRequest],
        in_state: Annotated[
            State | None, QueryParameter(name="state", description="Only versions in this state.")
        ] = None,
    ) -> ConfigVersionPage:
        rows = await service.workflow.list_versions(resource_name, page, state=in_state)
        items, cursor = paginate(rows, page.limit, lambda v: encode_cursor(v.number))
        return ConfigVersionPage(items=[ConfigVersionOut.of(resource_name, v) for v in items], next_cursor=cursor)

    @get(
        "/{name:str}/versions/{version:int}",
        opt={"scope": Scope.READ},
        operation_id="getConfigVersion",
        summary="Get one version",
    )
    async def get_version(
        self, resource_name: NamedDependency[str], version: FromPath[int], service: NamedDependency[ConfigService]
    ) -> ConfigVersionOut:
        _, row = await service.workflow.resolve(resource_name, version=version, label=None)
        return ConfigVersionOut.of(resource_name, row)

    @get("/{name:str}/diff", opt={"scope": Scope.READ}, operation_id="diffConfigVersions", summary="Diff two versions")
    async def diff_versions(
        self,
        resource_name: NamedDependency[str],
        service: NamedDependency[ConfigService],
        from_version: Annotated[int, QueryParameter(name="from", ge=1)],
        to_version: Annotated[int, QueryParameter(name="to", ge=1)],
    ) -> ConfigDiff:
        changes = await service.diff(resource_name, from_version, to_version)
        return ConfigDiff(config=resource_name, from_version=from_version, to_version=to_version, changes=changes)
