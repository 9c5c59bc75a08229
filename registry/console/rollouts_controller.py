"""A rollout's page and its moving parts for live refresh: read-only (scope ``read``), on the read replica as the
API's ``GET /v1/rollouts/{id}``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.access import SCOPE_OPT
from registry.auth.keys import Scope
from registry.console.controller import CONSOLE_PREFIX, provide_viewer, render
from registry.console.rollouts import ROLLOUT_REFRESH_MS, ConsoleRollouts
from registry.runtime import Runtime


def provide_console_rollouts(
    read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ConsoleRollouts:
    return ConsoleRollouts(read_session, runtime.prompt_limits)


class RolloutPagesController(Controller):
    path = f"{CONSOLE_PREFIX}/rollouts"
    dependencies = {
        "viewer": Provide(provide_viewer, sync_to_thread=False),
        "rollouts": Provide(provide_console_rollouts, sync_to_thread=False),
    }

    @get("/{rollout_id:int}", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleRollout", include_in_schema=False)
    async def rollout_page(
        self,
        request: Request[Any, Any, Any],
        rollout_id: FromPath[int],
        rollouts: NamedDependency[ConsoleRollouts],
    ) -> Template:
        view = await rollouts.page(rollout_id)
        return render(request, "rollout.html", view=view, refresh_ms=ROLLOUT_REFRESH_MS, section="prompts")

    @get(
        "/{rollout_id:int}/live",
        opt={SCOPE_OPT: Scope.READ},
        operation_id="consoleRolloutLive",
        include_in_schema=False,
    )
    async def rollout_live(
        self,
        request: Request[Any, Any, Any],
        rollout_id: FromPath[int],
        rollouts: NamedDependency[ConsoleRollouts],
    ) -> Template:
        """The rollout page's moving parts alone, for ``static/live.js`` while it runs."""
        return render(request, "rollout-live.html", view=await rollouts.page(rollout_id))


__all__ = ["RolloutPagesController"]
