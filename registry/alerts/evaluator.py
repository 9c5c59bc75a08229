"""The alert evaluation, in the worker role: every ``alert_evaluate_seconds`` each enabled rule is evaluated.

One evaluator acts on a rule at a time across replicas, by the rule's lease taken in one conditional
UPDATE (as rollouts and evaluation runs are taken) that writes a token new to that claim (the
evaluator's name and a random part), kept and renewed at every evaluation and left to expire when its
holder stops, so another worker takes over. Each evaluation runs in its own transaction, committed like
a request's: the incident, its outbox event and its audit entry together, after a first statement that
renews the lease on the condition that the token is still the rule's. An evaluator that stalled past
its lease and was taken over, even by one of its own name, so fires, resolves and notifies nothing, and
a live lease is never taken again.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.alerts.evaluation import Transition
from registry.alerts.metrics import AlertMetrics, SignalSnapshot
from registry.alerts.repository import AlertLeaseLostError, AlertRepository
from registry.alerts.service import AlertService
from registry.db.base import utcnow
from registry.db.session import unit_of_work
from registry.lib.changes import ChangeBus
from registry.lib.jobs import PeriodicJob

logger = structlog.get_logger("registry.alerts")


class AlertEvaluator:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: ChangeBus,
        backends: Collection[str],
        *,
        interval: float,
        clock: Callable[[], datetime] = utcnow,
        metrics_registry: CollectorRegistry | None = None,
        owner: str | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.bus = bus
        self.backends = backends
        self.interval = interval
        self.lease = timedelta(seconds=max(3 * interval, 30.0))
        self.clock = clock
        self.metrics = AlertMetrics(metrics_registry)
        self.owner = owner or f"{socket.gethostname()[:40]}-{os.getpid()}"
        self.leases: dict[int, str] = {}  # the token of each rule this evaluator holds the lease of

    def jobs(self) -> list[PeriodicJob]:
        return [PeriodicJob("alert-evaluate", self.interval, self.run_once, shared=True, run_at_shutdown=False)]

    async def run_once(self) -> dict[int, list[tuple[str, Transition]]]:
        """Evaluate every enabled rule this evaluator holds (or can take) the lease of; what fired or resolved."""
        async with self.sessionmaker() as session:
            ids = list(await AlertRepository(session).enabled_ids())
        done: dict[int, list[tuple[str, Transition]]] = {}
        for rule_id in ids:
            try:
                transitions = await self.evaluate(rule_id)
            except Exception:
                logger.exception("alert evaluation failed", rule=rule_id)
                continue
            if transitions:
                done[rule_id] = transitions
        try:
            await self.refresh_metrics()
        except Exception:
            logger.exception("alert metrics refresh failed")
        return done

    async def refresh_metrics(self) -> None:
        """What Prometheus cannot see otherwise: budgets used, rollbacks, the registry's own firing alerts."""
        async with self.sessionmaker() as session:
            repository = AlertRepository(session)
            self.metrics.snapshot = SignalSnapshot(
                budget_used=await repository.budget_shares(self.clock()),
                rollouts_rolled_back=await repository.rollouts_rolled_back(),
                firing=await repository.firing_counts(),
            )

    async def evaluate(self, rule_id: int) -> list[tuple[str, Transition]] | None:
        """None when another evaluator holds the rule's lease (or took it over from this one)."""
        now = self.clock()
        lease = self.leases.get(rule_id) or await self._claim(rule_id, now)
        if lease is None:
            return None
        try:
            return await self._act(rule_id, lease, now)
        except AlertLeaseLostError:
            # Taken over (or the rule was deleted): the next evaluation claims anew if it may.
            logger.warning("the alert rule's lease is no longer this evaluator's", rule=rule_id, lease=lease)
            self.leases.pop(rule_id, None)
            return None

    async def _claim(self, rule_id: int, now: datetime) -> str | None:
        """Take the lease with a token new to this claim (it fits the 64 characters of ``lease_owner``)."""
        lease = f"{self.owner[:55]}/{secrets.token_hex(4)}"
        async with self.sessionmaker() as session, session.begin():
            if not await AlertRepository(session).claim(rule_id, lease, now, now + self.lease):
                return None
        self.leases[rule_id] = lease
        return lease

    async def _act(self, rule_id: int, lease: str, now: datetime) -> list[tuple[str, Transition]]:
        async with unit_of_work(self.sessionmaker, self.bus) as session:
            service = AlertService(session, self.backends)
            return await service.evaluate(rule_id, now, lease=lease, lease_until=self.clock() + self.lease)
