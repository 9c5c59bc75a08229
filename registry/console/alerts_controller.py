"""The alerts page: admin only, as the API's alert routes (rules watch every key's budget)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.access import SCOPE_OPT
from registry.auth.keys import Scope
from registry.console.alerts import ConsoleAlerts
from registry.console.controller import CONSOLE_PREFIX, provide_viewer, render
from registry.lib.pagination import PageRequest
from registry.runtime import Runtime


def provide_console_alerts(
    read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ConsoleAlerts:
    return ConsoleAlerts(read_session, list(runtime.settings.backends))


class AlertPagesController(Controller):
    path = f"{CONSOLE_PREFIX}/alerts"
    dependencies = {
        "viewer": Provide(provide_viewer, sync_to_thread=False),
        "alerts": Provide(provide_console_alerts, sync_to_thread=False),
    }

    @get("/", opt={SCOPE_OPT: Scope.ADMIN}, operation_id="consoleAlerts", include_in_schema=False)
    async def alerts_page(
        self,
        request: Request[Any, Any, Any],
        alerts: NamedDependency[ConsoleAlerts],
        page: NamedDependency[PageRequest],
        status: Annotated[Literal["", "firing", "resolved"], QueryParameter()] = "",
        rules_after: Annotated[str | None, QueryParameter(name="rules", max_length=200)] = None,
    ) -> Template:
        view = await alerts.page(page, status=status, rules_after=rules_after)
        return render(
            request,
            "alerts.html",
            view=view,
            incidents_at=request.query_params.get("cursor") or "",
            rules_at=rules_after or "",
            section="alerts",
        )


__all__ = ["AlertPagesController"]
