"""Routes that prompts and model configs share: the resource itself, its history and state changes.

``PromptController`` and ``ConfigController`` subclass this and add their own
version routes; each provides a ``service`` dependency, a ``VersionedResourceService``.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.types import Method, OperationIDCreator

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.schema import paginate
from registry.lib.versioned import VersionedResourceService
from registry.lib.versioned_schemas import (
    CreateResource,
    HistoryPage,
    PromoteRequest,
    PromotionOut,
    ResourceOut,
    ResourcePage,
    RollbackRequest,
    TransitionOut,
    UpdateResource,
)


def operation_id(template: str) -> OperationIDCreator:
    """An operation id per resource, from the route's path: ``promote{Resource}Version`` -> promotePromptVersion."""

    def create(handler: HTTPRouteHandler, method: Method, components: list[Any]) -> str:
        collection = next(c for c in components if isinstance(c, str) and c not in ("v1", ""))
        singular = collection.removesuffix("s")
        return template.format(Resource=singular.capitalize(), resource=singular)

    return create


class VersionedResourceController(Controller):
    @post("/", opt={"scope": Scope.WRITE}, operation_id=operation_id("create{Resource}"), summary="Create")
    async def create_resource(
        self,
        data: JSONBody[CreateResource],
        service: NamedDependency[VersionedResourceService[Any, Any, Any]],
        current_actor: NamedDependency[Actor],
    ) -> ResourceOut:
        return ResourceOut.of(await service.create_resource(data.name, data.description, data.tags, current_actor))

    @get("/", opt={"scope": Scope.READ}, operation_id=operation_id("list{Resource}s"), summary="List")
    async def list_resources(
        self,
        service: NamedDependency[VersionedResourceService[Any, Any, Any]],
        page: NamedDependency[PageRequest],
        prefix: Annotated[str | None, QueryParameter(max_length=128, description="Name prefix, e.g. a folder.")] = None,
        tag: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> ResourcePage:
        rows = await service.list_resources(page, prefix=prefix, tag=tag)
        items, cursor = paginate(rows, page.limit, lambda r: encode_cursor(r.name))
        return ResourcePage(items=[ResourceOut.of(r) for r in items], next_cursor=cursor)

    @patch(
        "/{name:str}",
        opt={"scope": Scope.WRITE},
        operation_id=operation_id("update{Resource}"),
        summary="Update description or tags",
    )
    async def update_resource(
        self,
        resource_name: NamedDependency[str],
        data: JSONBody[UpdateResource],
        service: NamedDependency[VersionedResourceService[Any, Any, Any]],
        current_actor: NamedDependency[Actor],
    ) -> ResourceOut:
        resource = await service.workflow.update_resource(
            resource_name, current_actor, description=data.description, tags=data.tags
        )
        return ResourceOut.of(resource)

    @get(
        "/{name:str}/history",
        opt={"scope": Scope.READ},
        operation_id=operation_id("{resource}History"),
        summary="State transitions, newest first",
    )
    async def history(
        self,
        resource_name: NamedDependency[str],
        service: NamedDependency[VersionedResourceService[Any, Any, Any]],
        page: NamedDependency[PageRequest],
    ) -> HistoryPage:
        rows = await service.workflow.history(resource_name, page)
        items, cursor = paginate(rows, page.limit, lambda t: encode_cursor(t.id))
        return HistoryPage(items=[TransitionOut.of(t) for t in items], next_cursor=cursor)

    @post(
        "/{name:str}/versions/{version:int}/promote",
        opt={"scope": Scope.PROMOTE},
        operation_id=operation_id("promote{Resource}Version"),
        summary="Move a version to staging, production or archived",
        status_code=200,
    )
    async def promote(
        self,
        resource_name: NamedDependency[str],
        version: FromPath[int],
        data: JSONBody[PromoteRequest],
        service: NamedDependency[VersionedResourceService[Any, Any, Any]],
        current_actor: NamedDependency[Actor],
    ) -> PromotionOut:
        return PromotionOut.of(
            resource_name, await service.workflow.promote(resource_name, version, data, current_actor)
        )

    @post(
        "/{name:str}/rollback",
        opt={"scope": Scope.PROMOTE},
        operation_id=operation_id("rollback{Resource}"),
        summary="Bring an earlier production version back (default: the previous one)",
        status_code=200,
    )
    async def rollback(
        self,
        resource_name: NamedDependency[str],
        data: JSONBody[RollbackRequest],
        service: NamedDependency[VersionedResourceService[Any, Any, Any]],
        current_actor: NamedDependency[Actor],
    ) -> PromotionOut:
        return PromotionOut.of(resource_name, await service.workflow.rollback(resource_name, data, current_actor))
