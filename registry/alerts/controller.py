"""HTTP routes of alerts, all ``admin``: rules decide what webhooks send and watch every key's budget,
and incidents show keys' spend, as budgets and webhooks themselves are ``admin``."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from registry.alerts.schemas import CreateRule, IncidentOut, IncidentPage, RuleOut, RulePage, UpdateRule
from registry.alerts.service import AlertService
from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.schema import paginate
from registry.runtime import Runtime


def provide_alert_service(db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]) -> AlertService:
    return AlertService(db_session, runtime.settings.backends.keys())


class AlertRuleController(Controller):
    path = "/alerts/rules"
    tags = ["alerts"]
    dependencies = {"service": Provide(provide_alert_service, sync_to_thread=False)}

    @post(
        "/",
        opt={"scope": Scope.ADMIN},
        operation_id="createAlertRule",
        summary="Create an alert rule over the registry's own signals",
        description="`kind` is `error_rate` (a fraction), `latency_p95` or `ttft_p95` (milliseconds), "
        "`cost_per_hour`, `breaker_open` (requests refused by an open breaker, a backend's refusals behind a fallback "
        "that answered included), `budget` (a fraction of a "
        "key's monthly budget) or `rollout_rolled_back` (rollouts rolled back). The worker evaluates it every "
        "`REGISTRY_ALERT_EVALUATE_SECONDS`; a firing and a resolution are webhook events (`alert.firing`, "
        "`alert.resolved`) and audit entries.",
    )
    async def create_rule(
        self, data: JSONBody[CreateRule], service: NamedDependency[AlertService], current_actor: NamedDependency[Actor]
    ) -> RuleOut:
        return RuleOut.of(await service.create(data, current_actor))

    @get("/", opt={"scope": Scope.ADMIN}, operation_id="listAlertRules", summary="List alert rules")
    async def list_rules(self, service: NamedDependency[AlertService], page: NamedDependency[PageRequest]) -> RulePage:
        items, cursor = paginate(await service.list_rules(page), page.limit, lambda r: encode_cursor(r.id))
        return RulePage(items=[RuleOut.of(r) for r in items], next_cursor=cursor)

    @get("/{rule_id:int}", opt={"scope": Scope.ADMIN}, operation_id="getAlertRule", summary="Get an alert rule")
    async def get_rule(self, rule_id: FromPath[int], service: NamedDependency[AlertService]) -> RuleOut:
        return RuleOut.of(await service.require(rule_id))

    @patch(
        "/{rule_id:int}",
        opt={"scope": Scope.ADMIN},
        operation_id="updateAlertRule",
        summary="Change an alert rule",
        description="Disabling a rule resolves its firing incidents (resolution `rule_disabled`); so does a new "
        "scope or grouping (resolution `rule_changed`): its series are others from then on.",
    )
    async def update_rule(
        self,
        rule_id: FromPath[int],
        data: JSONBody[UpdateRule],
        service: NamedDependency[AlertService],
        current_actor: NamedDependency[Actor],
    ) -> RuleOut:
        return RuleOut.of(await service.update(rule_id, data, current_actor))

    @delete(
        "/{rule_id:int}",
        opt={"scope": Scope.ADMIN},
        operation_id="deleteAlertRule",
        summary="Delete an alert rule",
        description="Its firing incidents are resolved (resolution `rule_deleted`); its incidents stay listed.",
    )
    async def delete_rule(
        self, rule_id: FromPath[int], service: NamedDependency[AlertService], current_actor: NamedDependency[Actor]
    ) -> None:
        await service.delete(rule_id, current_actor)


class AlertIncidentController(Controller):
    path = "/alerts/incidents"
    tags = ["alerts"]
    dependencies = {"service": Provide(provide_alert_service, sync_to_thread=False)}

    @get(
        "/",
        opt={"scope": Scope.ADMIN},
        operation_id="listAlertIncidents",
        summary="Alert incidents, newest first: the value that fired, the threshold, start and end",
    )
    async def list_incidents(
        self,
        service: NamedDependency[AlertService],
        page: NamedDependency[PageRequest],
        status: Annotated[Literal["firing", "resolved"] | None, QueryParameter()] = None,
        rule_id: Annotated[int | None, QueryParameter(ge=1, description="Only this rule's incidents.")] = None,
    ) -> IncidentPage:
        rows = await service.incidents(page, status=status, rule_id=rule_id)
        items, cursor = paginate(rows, page.limit, lambda i: encode_cursor(i.id))
        return IncidentPage(items=[IncidentOut.of(i) for i in items], next_cursor=cursor)
