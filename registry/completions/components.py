"""The completions domain's process-wide parts, built once by ``Runtime.build``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import structlog
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.budgets import BudgetGuard
from registry.completions.cache import ResponseCache
from registry.completions.embeddings import EmbeddingClient
from registry.completions.metrics import CompletionMetrics
from registry.completions.prefill import PrefillCounter
from registry.completions.repository import CompletionRepository
from registry.completions.semantic_cache import SemanticCache
from registry.completions.upstream import UpstreamClient
from registry.completions.usage import UsageRecorder
from registry.db.base import utcnow
from registry.experiments.router import UNIT_ERASED
from registry.lib.changes import Change, ChangeBus
from registry.lib.http_client import HttpClient
from registry.lib.jobs import PeriodicJob
from registry.settings import Settings

logger = structlog.get_logger("registry.completions")


@dataclass
class Completions:
    upstream: UpstreamClient
    metrics: CompletionMetrics
    recorder: UsageRecorder
    # None where each record must be made at once (an evaluation run charges its attempt as it is recorded).
    prefill: PrefillCounter | None
    budgets: BudgetGuard
    cache: ResponseCache
    semantic: SemanticCache
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
        recorder.on_unstored(metrics.count_unstored)
        upstream = UpstreamClient(http, settings.backends, metrics)
        cache = ResponseCache(redis, settings.redis_key_prefix, ttl=settings.completion_cache_ttl_seconds)
        bus.subscribe(partial(_forget_erased_unit, recorder, cache))
        bus.subscribe(cache.on_change)  # a prompt's store_io going off deletes its entries
        return cls(
            upstream=upstream,
            metrics=metrics,
            recorder=recorder,
            prefill=PrefillCounter(upstream),
            budgets=BudgetGuard(sessionmaker, bus, recorder),
            cache=cache,
            semantic=SemanticCache(
                sessionmaker,
                _embedding_client(settings, upstream, http),
                metrics,
                bus,
                ttl=settings.semantic_cache_ttl_seconds,
                max_candidates=settings.semantic_cache_max_candidates,
                settings_ttl=settings.cache_ttl_seconds,
            ),
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
            PeriodicJob(
                "semantic-cache-purge",
                self.settings.semantic_cache_purge_seconds,
                self.semantic.purge_expired,
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


def _forget_erased_unit(recorder: UsageRecorder, cache: ResponseCache, change: Change) -> None:
    """A unit was erased (``registry.experiments.privacy``): what this process still holds of it goes too.

    The change names the unit's digest, never the unit.
    """
    if change.kind == "experiment" and change.action == UNIT_ERASED:
        recorder.forget_unit(change.name)
        cache.on_unit_erased(change.name)


def _embedding_client(settings: Settings, upstream: UpstreamClient, http: HttpClient) -> EmbeddingClient | None:
    """The semantic cache's embedding backend; None (no semantic cache) unless a backend and model are set."""
    if settings.semantic_cache_backend is None or settings.semantic_cache_model is None:
        return None
    backend = upstream.backends.get(settings.semantic_cache_backend)
    if backend is None:
        raise ValueError(
            f"REGISTRY_SEMANTIC_CACHE_BACKEND names '{settings.semantic_cache_backend}', "
            "which is not in REGISTRY_BACKENDS"
        )
    return EmbeddingClient(http, backend, settings.semantic_cache_model)
