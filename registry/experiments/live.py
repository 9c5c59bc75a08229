"""The experiments domain's process-wide parts, built once by the runtime."""

from __future__ import annotations

import functools
from datetime import timedelta

import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.experiments.aggregator import StatisticsAggregator
from registry.experiments.event_buffer import EventBuffer
from registry.experiments.exposures import ExposureBuffer
from registry.experiments.ingest import EventLimits, write_held_events
from registry.experiments.privacy_digest import RecentErasures
from registry.experiments.router import ExperimentRouter
from registry.experiments.sources import ObservationSource, default_sources
from registry.lib.changes import ChangeBus
from registry.lib.jobs import PeriodicJob
from registry.lib.logging import error_text
from registry.settings import Settings

logger = structlog.get_logger("registry.experiments")


class LiveExperiments:
    """Router (render path), exposure buffer, statistics aggregator and observation sources."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: ChangeBus,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.sources: dict[str, ObservationSource] = default_sources()
        self.erasures = RecentErasures()  # what the exposures and the events of an erased unit look up
        self.exposures = ExposureBuffer(
            sessionmaker,
            max_pending=settings.experiment_exposure_buffer_size,
            erasures=self.erasures,
            metrics_registry=metrics_registry,
        )
        self.event_limits = EventLimits.of(settings)
        self.events = EventBuffer(
            sessionmaker,
            functools.partial(write_held_events, limits=self.event_limits, erasures=self.erasures),
            max_pending=settings.experiment_event_buffer_size,
            erasures=self.erasures,
            metrics_registry=metrics_registry,
        )
        self.router = ExperimentRouter(sessionmaker, bus, self.exposures, metrics_registry)
        self.aggregator = StatisticsAggregator(
            sessionmaker,
            self.sources,
            batch_size=settings.experiment_statistics_batch,
            grace=timedelta(seconds=settings.experiment_exposure_grace_seconds),
            # A run stops after about half its interval (and at most 10 s, which also bounds the run at shutdown).
            time_budget=min(max(settings.experiment_statistics_seconds / 2, 0.5), 10.0),
        )

    def jobs(self) -> list[PeriodicJob]:
        """Periodic jobs; the runtime runs each once more at shutdown, in this order."""
        settings = self.settings
        return [
            PeriodicJob("experiment-exposures", settings.experiment_exposure_flush_seconds, self.flush_exposures),
            PeriodicJob("experiment-events", settings.experiment_event_retry_seconds, self.flush_events),
            PeriodicJob(
                "experiment-statistics", settings.experiment_statistics_seconds, self.update_statistics, shared=True
            ),
            PeriodicJob("experiment-refresh", settings.experiment_refresh_seconds, self.router.reload),
        ]

    async def flush_exposures(self) -> None:
        await self.exposures.flush()

    async def flush_events(self) -> None:
        await self.events.flush()

    async def update_statistics(self) -> None:
        await self.aggregator.run()

    async def start(self) -> None:
        try:
            await self.router.reload()
        except Exception as exc:
            logger.warning("could not load experiments at start; the periodic refresh retries", error=error_text(exc))

    async def stop(self) -> None:
        await self.router.stop()
        await self.exposures.stop()
