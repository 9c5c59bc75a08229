"""HTTP routes of rollouts: ``read`` to see them, ``promote`` to start and move them."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.deps import provide_resource_name
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.schema import paginate
from registry.rollouts.schemas import CreateRollout, RolloutAction, RolloutOut, RolloutPage
from registry.rollouts.service import RolloutService
from registry.runtime import Runtime


def provide_rollout_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> RolloutService:
    return RolloutService(db_session, runtime.prompt_limits)


class PromptRolloutController(Controller):
    path = "/prompts/{name:str}/rollouts"
    tags = ["rollouts"]
    dependencies = {
        "service": Provide(provide_rollout_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @post(
        "/",
        opt={"scope": Scope.PROMOTE},
        operation_id="createRollout",
        summary="Roll a candidate version out step by step, watched by guardrails",
    )
    async def create_rollout(
        self,
        resource_name: NamedDependency[str],
        data: JSONBody[CreateRollout],
        service: NamedDependency[RolloutService],
        current_actor: NamedDependency[Actor],
    ) -> RolloutOut:
        return RolloutOut.of(await service.create(resource_name, data, current_actor))

    @get("/", opt={"scope": Scope.READ}, operation_id="listRollouts", summary="A prompt's rollouts, newest first")
    async def list_rollouts(
        self,
        resource_name: NamedDependency[str],
        service: NamedDependency[RolloutService],
        page: NamedDependency[PageRequest],
    ) -> RolloutPage:
        rows = await service.list_for_prompt(resource_name, page)
        items, cursor = paginate(rows, page.limit, lambda r: encode_cursor(r.id))
        return RolloutPage(items=[RolloutOut.of(r) for r in items], next_cursor=cursor)


class RolloutController(Controller):
    path = "/rollouts"
    tags = ["rollouts"]
    dependencies = {"service": Provide(provide_rollout_service, sync_to_thread=False)}

    @get(
        "/{rollout_id:int}",
        opt={"scope": Scope.READ},
        operation_id="getRollout",
        summary="A rollout: its state, step, the last check's evidence and its history",
    )
    async def get_rollout(self, rollout_id: FromPath[int], service: NamedDependency[RolloutService]) -> RolloutOut:
        rollout, events = await service.with_events(rollout_id)
        return RolloutOut.of(rollout, events)

    @post(
        "/{rollout_id:int}/{action:str}",
        opt={"scope": Scope.PROMOTE},
        operation_id="moveRollout",
        summary="Pause, resume, abort or advance a rollout by hand (recorded with the reason)",
        description="`action` is `pause`, `resume`, `abort` or `advance` (to the next step at once; after the "
        "last, the promotion). 409 when the rollout's status does not allow it, or when `expected_step` is given "
        "and the rollout is at another step.",
        status_code=200,
    )
    async def move_rollout(
        self,
        rollout_id: FromPath[int],
        action: FromPath[str],
        service: NamedDependency[RolloutService],
        current_actor: NamedDependency[Actor],
        data: JSONBody[RolloutAction | None] = None,
    ) -> RolloutOut:
        data = data or RolloutAction()
        return RolloutOut.of(
            await service.move(rollout_id, action, data.reason, current_actor, expected_step=data.expected_step)
        )
