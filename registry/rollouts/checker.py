"""The rollout check, in the worker role: every ``rollout_check_seconds`` each running rollout is checked.

One checker acts on a rollout at a time across replicas: it first takes the rollout's lease in one
conditional UPDATE (as evaluation runs are taken), renewed at every check and left to expire when
its holder stops, so another worker takes over. The check itself runs in its own transaction with
the rollout's row locked, committed and published like a request's.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db.base import utcnow
from registry.db.session import unit_of_work
from registry.lib.changes import ChangeBus
from registry.lib.jobs import PeriodicJob
from registry.prompts.service import PromptLimits
from registry.rollouts.plan import Action
from registry.rollouts.repository import RolloutRepository
from registry.rollouts.service import RolloutService

logger = structlog.get_logger("registry.rollouts")


class RolloutChecker:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: ChangeBus,
        prompt_limits: PromptLimits,
        *,
        interval: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.bus = bus
        self.prompt_limits = prompt_limits
        self.interval = interval
        self.lease = timedelta(seconds=max(3 * interval, 30.0))
        self.clock = clock
        self.owner = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"

    def jobs(self) -> list[PeriodicJob]:
        return [PeriodicJob("rollout-check", self.interval, self.run_once, shared=True, run_at_shutdown=False)]

    async def run_once(self) -> dict[int, Action]:
        """Check every running rollout this checker holds (or can take) the lease of; what each check did."""
        async with self.sessionmaker() as session:
            ids = list(await RolloutRepository(session).running_ids())
        done: dict[int, Action] = {}
        for rollout_id in ids:
            try:
                action = await self.check(rollout_id)
            except Exception:
                logger.exception("rollout check failed", rollout=rollout_id)
                continue
            if action is not None:
                done[rollout_id] = action
        return done

    async def check(self, rollout_id: int) -> Action | None:
        now = self.clock()
        async with self.sessionmaker() as session, session.begin():
            if not await RolloutRepository(session).claim(rollout_id, self.owner, now, now + self.lease):
                return None
        # Committed as a request is, so the change (a new share, traffic back to production) reaches every router.
        async with unit_of_work(self.sessionmaker, self.bus) as session:
            return await RolloutService(session, self.prompt_limits).check(rollout_id, now)
