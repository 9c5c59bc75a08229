"""The rollout check, in the worker role: every ``rollout_check_seconds`` each running rollout is checked.

One checker acts on a rollout at a time across replicas: it first takes the rollout's lease in one
conditional UPDATE (as evaluation runs are taken), writing a token new to that claim (its name and a
random part), and keeps it while it renews the lease at every check; a lease not renewed expires so
another worker takes over. The check itself runs in its own transaction, committed and published like
a request's, whose first statement renews the lease on the condition that the token is still the
rollout's: a checker that stalled past its lease and was taken over, even by a checker of its own name
(a restarted process keeping its hostname), changes nothing, and a live lease is never taken again.
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
from registry.rollouts.repository import RolloutLeaseLostError, RolloutRepository
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
        owner: str | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.bus = bus
        self.prompt_limits = prompt_limits
        self.interval = interval
        self.lease = timedelta(seconds=max(3 * interval, 30.0))
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()[:40]}-{os.getpid()}"
        self.leases: dict[int, str] = {}  # the token of each rollout this checker holds the lease of

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
        """Check the rollout if this checker holds its lease or can take it; None when it cannot (or lost it)."""
        lease = self.leases.get(rollout_id) or await self._claim(rollout_id, self.clock())
        if lease is None:
            return None
        try:
            return await self._act(rollout_id, lease)
        except RolloutLeaseLostError:
            # Taken over (or ended, which lets the lease go): the next check claims anew if it may.
            logger.warning("the rollout's lease is no longer this checker's", rollout=rollout_id, lease=lease)
            self.leases.pop(rollout_id, None)
            return None

    async def _claim(self, rollout_id: int, now: datetime) -> str | None:
        """Take the lease with a token new to this claim (it fits the 64 characters of ``lease_owner``)."""
        lease = f"{self.owner[:55]}/{secrets.token_hex(4)}"
        async with self.sessionmaker() as session, session.begin():
            if not await RolloutRepository(session).claim(rollout_id, lease, now, now + self.lease):
                return None
        self.leases[rollout_id] = lease
        return lease

    async def _act(self, rollout_id: int, lease: str) -> Action | None:
        """The check, at the time its transaction starts; raises ``RolloutLeaseLostError`` if the lease moved."""
        now = self.clock()
        # Committed as a request is, so the change (a new share, traffic back to production) reaches every router.
        async with unit_of_work(self.sessionmaker, self.bus) as session:
            service = RolloutService(session, self.prompt_limits)
            return await service.check(rollout_id, now, lease=lease, lease_until=now + self.lease)
