"""The completions domain's process-wide parts, built once by ``Runtime.build``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import structlog
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.budgets import BudgetGuard
from registry.completions.cache import ResponseCache
from registry.completions.metrics import CompletionMetrics
from registry.completions.repository import CompletionRepository
from registry.completions.upstream import UpstreamClient
from registry.completions.usage import UsageRecorder
from registry.db.base import utcnow
from registry.lib.changes import ChangeBus
from registry.lib.http_client import HttpClient
from registry.lib.jobs import PeriodicJob
from registry.settings import Settings

logger = structlog.get_logger("registry.completions")


@dataclass
class Completions:
    upstream: UpstreamClient
    metrics: CompletionMetrics
    recorder: UsageRecorder
    budgets: BudgetGuard
    cache: ResponseCache
    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings

    @classmethod
    def build(
        cls,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        redis: Redis | None,
        bus: ChangeBus,
        metrics_registry: CollectorRegistry,
        http: HttpClient,
    ) -> Completions:
        metrics = CompletionMetrics(metrics_registry)
        recorder = UsageRecorder(sessionmaker)
        return cls(
            upstream=UpstreamClient(http, settings.backends, metrics),
            metrics=metrics,
            recorder=recorder,
            budgets=BudgetGuard(sessionmaker, bus, recorder),
            cache=ResponseCache(redis, settings.redis_key_prefix, ttl=settings.completion_cache_ttl_seconds),
            sessionmaker=sessionmaker,
            settings=settings,
        )

    def jobs(self) -> list[PeriodicJob]:
        """Periodic work: this process's usage buffer, and the retention purge every replica shares."""
        return [
            PeriodicJob("completion-usage", self.settings.completion_usage_flush_seconds, self.recorder.flush),
            PeriodicJob(
                "completion-text-retention",
                self.settings.completion_io_purge_seconds,
                self.purge_expired_texts,
                shared=True,
                run_at_shutdown=False,
            ),
        ]

    async def purge_expired_texts(self) -> None:
        """Clear stored prompts and completion texts past the retention period."""
        before = utcnow() - timedelta(days=self.settings.completion_io_retention_days)
        async with self.sessionmaker() as session, session.begin():
            purged = await CompletionRepository(session).purge_texts(before)
        if purged:
            logger.info("purged stored completion texts", rows=purged)
