"""The alert evaluation, in the worker role: every ``alert_evaluate_seconds`` each enabled rule is evaluated.

One evaluator acts on a rule at a time across replicas, by the rule's lease taken in one conditional
UPDATE (as rollouts and evaluation runs are taken), renewed at every evaluation and left to expire
when its holder stops, so another worker takes over. Each evaluation runs in its own transaction
with the rule's row locked, committed like a request's: the incident, its outbox event and its audit
entry together.
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
from registry.alerts.repository import AlertRepository
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
    ) -> None:
        self.sessionmaker = sessionmaker
        self.bus = bus
        self.backends = backends
        self.interval = interval
        self.lease = timedelta(seconds=max(3 * interval, 30.0))
        self.clock = clock
        self.metrics = AlertMetrics(metrics_registry)
        self.owner = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"

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
        """None when another evaluator holds the rule's lease."""
        now = self.clock()
        async with self.sessionmaker() as session, session.begin():
            if not await AlertRepository(session).claim(rule_id, self.owner, now, now + self.lease):
                return None
        async with unit_of_work(self.sessionmaker, self.bus) as session:
            return await AlertService(session, self.backends).evaluate(rule_id, now)
