from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.deps import provide_resource_name
from registry.lib.http import JsonResponse
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.promotion import State
from registry.lib.schema import paginate
from registry.lib.versioned_controller import VersionedResourceController
from registry.lib.versioned_schemas import (
    Label,
)
from registry.prompts.fast_path import render_response, resolve_response
from registry.prompts.schemas import (
    UNIT_CONSTRAINTS,
    CreatePromptVersion,
    PromptDiff,
    PromptOut,
    PromptVersionOut,
    PromptVersionPage,
    RenderOut,
    RenderRequest,
    ResolvedPromptOut,
    UpdatePrompt,
)
from registry.prompts.service import PromptService, variables_of
from registry.runtime import Runtime, runtime_of


def provide_prompt_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> PromptService:
    return PromptService(db_session, runtime.prompt_limits)


class PromptController(VersionedResourceController):
    path = "/prompts"
    tags = ["prompts"]
    dependencies = {
        "service": Provide(provide_prompt_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @get(
        "/{name:str}",
        opt={"scope": Scope.READ},
        operation_id="resolvePrompt",
        summary="Resolve a prompt by label or version",
        description="Defaults to the production version. Sends an ETag; `If-None-Match` gives 304. With `unit`, "
        "a running experiment may route the unit to a variant's version, named in `X-Registry-Experiment`, "
        "`-Phase`, `X-Registry-Variant` and `X-Registry-In-Experiment`.",
        responses={
            200: ResponseSpec(ResolvedPromptOut, description="The resolved version with its config."),
            304: ResponseSpec(None, description="The version in `If-None-Match` is still current."),
        },
    )
    async def resolve_prompt(
        self,
        request: Request[Any, Any, Any],
        name: FromPath[str],
        label: FromQuery[Label | None] = None,
        version: Annotated[int | None, QueryParameter(ge=1)] = None,
        if_none_match: Annotated[str | None, HeaderParameter(name="If-None-Match")] = None,
        unit: Annotated[str | None, QueryParameter(**UNIT_CONSTRAINTS)] = None,
    ) -> JsonResponse:
        # Served by ``PromptFastPath`` unless it hands the request on; no injected dependencies either way.
        return await resolve_response(
            runtime_of(request).prompts,
            name,
            label=label,
            version=version,
            unit=unit,
            if_none_match=if_none_match,
        )

    @patch(
        "/{name:str}",
        opt={"scope": Scope.WRITE},
        operation_id="updatePrompt",
        summary="Update description, tags or storage policy",
    )
    async def update_resource(  # replaces the shared handler: prompts also have a storage policy
        self,
        resource_name: NamedDependency[str],
        data: JSONBody[UpdatePrompt],
        service: NamedDependency[PromptService],
        current_actor: NamedDependency[Actor],
    ) -> PromptOut:
        prompt = await service.update_prompt(
            resource_name, current_actor, description=data.description, tags=data.tags, store_io=data.store_io
        )
        return PromptOut.of_prompt(prompt)

    @post(
        "/{name:str}/versions",
        opt={"scope": Scope.WRITE},
        operation_id="createPromptVersion",
        summary="Create a version (201), or get the newest if identical (200)",
        responses={
            200: ResponseSpec(PromptVersionOut, description="Identical to the newest version, which is returned.")
        },
    )
    async def create_version(
        self,
        resource_name: NamedDependency[str],
        data: JSONBody[CreatePromptVersion],
        service: NamedDependency[PromptService],
        current_actor: NamedDependency[Actor],
    ) -> Response[PromptVersionOut]:
        version, created = await service.create_version(resource_name, data, current_actor)
        body = PromptVersionOut.of(resource_name, version, variables_of(version))
        return Response(body, status_code=201 if created else 200)

    @get("/{name:str}/versions", opt={"scope": Scope.READ}, operation_id="listPromptVersions", summary="List versions")
    async def list_versions(
        self,
        resource_name: NamedDependency[str],
        service: NamedDependency[PromptService],
        page: NamedDependency[PageRequest],
        in_state: Annotated[
            State | None, QueryParameter(name="state", description="Only versions in this state.")
        ] = None,
    ) -> PromptVersionPage:
        rows = await service.workflow.list_versions(resource_name, page, state=in_state)
        items, cursor = paginate(rows, page.limit, lambda v: encode_cursor(v.number))
        return PromptVersionPage(
            items=[PromptVersionOut.of(resource_name, v, variables_of(v)) for v in items], next_cursor=cursor
        )

    @get(
        "/{name:str}/versions/{version:int}",
        opt={"scope": Scope.READ},
        operation_id="getPromptVersion",
        summary="Get one version",
    )
    async def get_version(
        self, resource_name: NamedDependency[str], version: FromPath[int], service: NamedDependency[PromptService]
    ) -> PromptVersionOut:
        row = await service.get_version(resource_name, version)
        return PromptVersionOut.of(resource_name, row, variables_of(row))

    @get("/{name:str}/diff", opt={"scope": Scope.READ}, operation_id="diffPromptVersions", summary="Diff two versions")
    async def diff_versions(
        self,
        resource_name: NamedDependency[str],
        service: NamedDependency[PromptService],
        from_version: Annotated[int, QueryParameter(name="from", ge=1)],
        to_version: Annotated[int, QueryParameter(name="to", ge=1)],
    ) -> PromptDiff:
        return await service.diff(resource_name, from_version, to_version)

    @post(
        "/{name:str}/render",
        opt={"scope": Scope.READ},
        operation_id="renderPrompt",
        summary="Render a prompt with variables",
        status_code=200,
        responses={200: ResponseSpec(RenderOut, description="The rendered prompt and the versions used.")},
    )
    async def render(
        self, request: Request[Any, Any, Any], name: FromPath[str], data: JSONBody[RenderRequest]
    ) -> JsonResponse:
        # Served by ``PromptFastPath`` unless it hands the request on.
        return await render_response(runtime_of(request).prompts, name, data)
