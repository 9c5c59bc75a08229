from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.auth.principal import Actor, Principal
from registry.completions.fast_path import complete_answer
from registry.completions.report_window import usage_window
from registry.completions.schemas import (
    BudgetOut,
    CompleteRequest,
    CompletionOut,
    SetBudget,
    UsageDimension,
    UsageReport,
)
from registry.completions.service import BudgetService, Caller, CompletionService, UsageService
from registry.deps import provide_resource_name
from registry.lib.disconnect import DisconnectWatch
from registry.lib.front import SSE_MEDIA_TYPE, Streamed
from registry.lib.http import decode_name
from registry.lib.streaming import PrimedStream
from registry.runtime import Runtime, runtime_of

DEFAULT_GROUP_BY: list[UsageDimension] = ["prompt", "version", "config", "key", "day"]
MAX_USAGE_ROWS = 10_000


def provide_completion_service(runtime: NamedDependency[Runtime]) -> CompletionService:
    return CompletionService(runtime.completions, runtime.prompts)


def provide_usage_service(
    read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> UsageService:
    """Usage reports read from the read replica, when one is configured."""
    return UsageService(read_session, runtime.completions)


def provide_budget_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> BudgetService:
    return BudgetService(db_session, runtime.completions.budgets)


class CompletionController(Controller):
    path = "/prompts"
    tags = ["completions"]
    dependencies = {
        "service": Provide(provide_completion_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @post(
        "/{name:str}/complete",
        opt={"scope": Scope.READ},
        operation_id="completePrompt",
        summary="Render a prompt and run it on its model config's backend",
        description="With `stream: true` the answer is `text/event-stream`: a `metadata` event, `delta` events "
        "with text as it is generated, then `done` with usage (or `error`).",
        status_code=200,
        responses={200: ResponseSpec(CompletionOut, description="The completion and the versions that made it.")},
    )
    async def complete(
        self, request: Request[Principal, Any, Any], name: FromPath[str], data: JSONBody[CompleteRequest]
    ) -> Response[Any]:
        # What the fast path (registry.completions.fast_path) serves, for the requests it hands on.
        runtime = runtime_of(request)
        service = CompletionService(runtime.completions, runtime.prompts)
        caller = Caller(key=request.user.public_id, request_id=request.scope["state"].get("request_id"))
        watch = DisconnectWatch(request.receive)
        try:
            answer = await complete_answer(service, decode_name(name), data, caller, watch, instance=request.url.path)
        finally:
            watch.stop()  # Litestar's stream listens for the disconnect itself
        if isinstance(answer, Streamed):
            return PrimedStream(answer.first, answer.rest, media_type=SSE_MEDIA_TYPE, headers=answer.headers)
        return Response(answer)


class UsageController(Controller):
    path = "/usage"
    tags = ["completions"]
    dependencies = {"service": Provide(provide_usage_service, sync_to_thread=False)}

    @get("/", opt={"scope": Scope.ANALYZE}, operation_id="completionUsage", summary="Completion usage and cost")
    async def usage(
        self,
        service: NamedDependency[UsageService],
        group_by: Annotated[
            list[UsageDimension] | None,
            QueryParameter(
                description="Dimensions to group by (repeat the parameter). Default: prompt, version, config, key, day."
            ),
        ] = None,
        since: Annotated[date | None, QueryParameter(description="First day (UTC); default: 30 days ago.")] = None,
        until: Annotated[date | None, QueryParameter(description="Last day (UTC), inclusive; default: today.")] = None,
        prompt: Annotated[str | None, QueryParameter(max_length=128)] = None,
        key: Annotated[str | None, QueryParameter(max_length=16, description="An API key id.")] = None,
    ) -> UsageReport:
        start, end = usage_window(since, until, today=datetime.now(UTC).date())
        dimensions: list[str] = list(dict.fromkeys(group_by or DEFAULT_GROUP_BY))
        items, truncated = await service.report(
            dimensions, since=start, until=end, prompt=prompt, key=key, limit=MAX_USAGE_ROWS
        )
        return UsageReport(group_by=dimensions, since=start, until=end, items=items, truncated=truncated)


class BudgetController(Controller):
    path = "/keys/{key_id:str}/budget"
    tags = ["access"]
    dependencies = {"service": Provide(provide_budget_service, sync_to_thread=False)}

    @get("/", opt={"scope": Scope.ADMIN}, operation_id="getKeyBudget", summary="A key's monthly budget and spend")
    async def get_budget(self, key_id: FromPath[str], service: NamedDependency[BudgetService]) -> BudgetOut:
        return await service.get(key_id)

    @put("/", opt={"scope": Scope.ADMIN}, operation_id="setKeyBudget", summary="Set a key's monthly budget")
    async def set_budget(
        self,
        key_id: FromPath[str],
        data: JSONBody[SetBudget],
        service: NamedDependency[BudgetService],
        current_actor: NamedDependency[Actor],
    ) -> BudgetOut:
        return await service.set(key_id, data, current_actor)
