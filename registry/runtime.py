"""Process-wide components, built once by the app factory and shared by every request.

One engine, one Redis pool, one HTTP client (pooled connections to completion
backends), one change bus, the caches, and the periodic background jobs
(buffer flushes). Started and stopped with the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import structlog
from litestar.connection import ASGIConnection
from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prompt_registry_client.templating import RenderLimits
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry.alerts.evaluator import AlertEvaluator
from registry.auth.lookups import UnknownKeyLookups
from registry.auth.rate_limit import RateLimiter
from registry.auth.verifier import ApiKeyVerifier
from registry.completions.components import Completions
from registry.completions.observations import CompletionSource
from registry.completions.upstream import http_client_for
from registry.db.change_log import ChangeLogReader
from registry.db.engine import create_engine, create_sessionmaker
from registry.evals.gates import EvalGateCheck
from registry.evals.runner import EvalWorker
from registry.experiments.live import LiveExperiments
from registry.feed.hub import FeedHub
from registry.lib.changes import ChangeBus
from registry.lib.http_client import HttpClient
from registry.lib.jobs import PeriodicJob, failure_is_logged
from registry.lib.metrics import HttpMetrics, ProcessGroupMetrics, RuntimeStateMetrics
from registry.lib.redis import create_redis
from registry.lib.shutdown import StopSignalHook
from registry.lib.versioned import PROMOTION_GATE, PROMOTION_LOCK
from registry.prompts.catalog import PromptCatalog
from registry.prompts.service import PromptLimits
from registry.rollouts.checker import RolloutChecker
from registry.rollouts.service import RolloutLock
from registry.settings import Settings
from registry.webhooks.dispatcher import DeliveryPolicy, WebhookDispatcher
from registry.webhooks.guard import AddressGuard, WebhookHttp

logger = structlog.get_logger("registry.runtime")

_frozen = False  # whether a runtime of this process has frozen what was alive at its start


def freeze_what_lives_on() -> None:
    """At the process's first start, move everything alive (modules, the app, compiled templates), which lives as
    long as the process, out of the collector's reach: full collections stay short, which is most of the tail
    latency.

    Once per process: a process that starts runtimes one after another (the tests, thousands of apps) froze each
    app and runtime for good at its start, about 3 MB each (9 GB over the suite); unfreezing at each stop instead
    made each start collect the whole heap again, about a second.
    """
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()


# How long a stop waits for background jobs that are running to end their current run. One cancelled mid-statement
# can leave SQLite's write lock held by its closed connection, so the final flushes would fail behind it.
JOB_STOP_WAIT_SECONDS = 10.0
SQLITE_LOCK_WAIT_SECONDS = 10.0  # how long a stop waits for SQLite's write lock before its final flushes


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    read_engine: AsyncEngine  # the primary itself unless a read replica is configured
    read_sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis | None
    http: HttpClient
    bus: ChangeBus
    metrics_registry: CollectorRegistry
    http_metrics: HttpMetrics
    key_verifier: ApiKeyVerifier
    rate_limiter: RateLimiter
    prompts: PromptCatalog
    prompt_limits: PromptLimits
    feed: FeedHub
    webhooks: WebhookDispatcher
    experiments: LiveExperiments
    completions: Completions
    evals: EvalWorker  # executes evaluation runs (worker and all roles)
    rollouts: RolloutChecker  # checks running rollouts (worker and all roles)
    alerts: AlertEvaluator  # evaluates alert rules (worker and all roles)
    job_failures: Counter  # runs of a background job that raised, by job: the log shows only some of them
    change_log: ChangeLogReader | None = None  # without Redis: what other processes changed
    process_group_metrics: ProcessGroupMetrics | None = None  # several server workers: /metrics merges them
    jobs: list[PeriodicJob] = field(default_factory=list)
    draining: bool = False  # a SIGTERM arrived: /ready answers 503 while the server drains
    job_stop_wait_seconds: float = JOB_STOP_WAIT_SECONDS
    _stop_signal: StopSignalHook | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _running_jobs: set[asyncio.Task[None]] = field(default_factory=set)  # those in a run, not asleep
    _stopping: bool = False

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        engine = create_engine(settings)
        sessionmaker = create_sessionmaker(engine)
        read_engine = create_engine(settings, url=settings.database_read_url) if settings.database_read_url else engine
        redis = create_redis(settings)
        http = http_client_for(settings.backends)
        bus = ChangeBus(redis, f"{settings.redis_key_prefix}changes")
        metrics_registry = CollectorRegistry(auto_describe=True)
        prompts = PromptCatalog(
            sessionmaker,
            bus,
            ttl=settings.cache_ttl_seconds,
            degraded_ttl=settings.cache_degraded_ttl_seconds,
            max_prompts=settings.cache_max_prompts,
            limits=RenderLimits(
                max_output_chars=settings.render_max_output_chars,
                timeout_seconds=settings.render_timeout_ms / 1000,
                max_iterations=settings.render_max_iterations,
            ),
        )
        completions = Completions.build(settings, sessionmaker, redis, bus, metrics_registry, http)
        runtime = cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            read_engine=read_engine,
            read_sessionmaker=create_sessionmaker(read_engine) if read_engine is not engine else sessionmaker,
            redis=redis,
            http=http,
            bus=bus,
            metrics_registry=metrics_registry,
            http_metrics=HttpMetrics(metrics_registry),
            job_failures=Counter(
                "registry_background_job_failures",
                "Runs of a background job that raised, by job (the log has the 1st, 2nd, 4th, 8th... of a streak).",
                # Not "job": Prometheus' own target label.
                ["background_job"],
                registry=metrics_registry,
            ),
            key_verifier=ApiKeyVerifier(
                sessionmaker,
                bus,
                cache_seconds=settings.api_key_cache_seconds,
                stale_seconds=settings.api_key_stale_seconds,
                unknown_lookups=UnknownKeyLookups(
                    per_second=settings.api_key_unknown_lookups_per_second,
                    concurrency=settings.api_key_unknown_lookups_concurrency,
                    registry=metrics_registry,
                ),
            ),
            rate_limiter=RateLimiter(
                redis, settings.redis_key_prefix, default_per_minute=settings.rate_limit_per_minute
            ),
            prompts=prompts,
            prompt_limits=PromptLimits(max_template_chars=settings.max_template_chars),
            feed=FeedHub(bus, max_per_key=settings.feed_max_listeners_per_key),
            webhooks=WebhookDispatcher(
                sessionmaker,
                WebhookHttp(
                    AddressGuard(settings.webhook_allowed_networks, resolve_timeout=settings.webhook_timeout_seconds)
                ),
                DeliveryPolicy(
                    timeout_seconds=settings.webhook_timeout_seconds,
                    max_attempts=settings.webhook_max_attempts,
                    retry_base_seconds=settings.webhook_retry_base_seconds,
                    retry_max_seconds=settings.webhook_retry_max_seconds,
                    disable_after_failures=settings.webhook_disable_after_failures,
                    disable_after=timedelta(days=settings.webhook_disable_after_days),
                ),
                metrics_registry,
            ),
            experiments=LiveExperiments(settings, sessionmaker, bus, metrics_registry),
            completions=completions,
            evals=EvalWorker(settings, sessionmaker, completions, prompts),
            rollouts=RolloutChecker(
                sessionmaker,
                bus,
                PromptLimits(max_template_chars=settings.max_template_chars),
                interval=settings.rollout_check_seconds,
            ),
            alerts=AlertEvaluator(
                sessionmaker,
                bus,
                settings.backends.keys(),
                interval=settings.alert_evaluate_seconds,
                metrics_registry=metrics_registry,
            ),
        )
        # Every promotion made on the app's sessions passes the evaluation gates (see PROMOTION_GATE), and
        # none moves a prompt's production label while a rollout holds it (PROMOTION_LOCK).
        sessionmaker.configure(info={PROMOTION_GATE: EvalGateCheck(), PROMOTION_LOCK: RolloutLock()})
        runtime.prompts.router = runtime.experiments.router
        runtime.experiments.sources["completions"] = CompletionSource()
        ProcessCollector(registry=metrics_registry)
        pools: dict[str, object] = {"primary": engine.pool}
        if read_engine is not engine:
            pools["read"] = read_engine.pool
        metrics_registry.register(
            RuntimeStateMetrics(
                pools=pools,
                redis_connected=(lambda: bus.connected) if redis is not None else None,
                prompt_cache=runtime.prompts,
            )
        )
        runtime.jobs.append(PeriodicJob("api-key-last-used", 30.0, runtime.key_verifier.flush_last_used))
        runtime.jobs.append(
            PeriodicJob(
                "rate-limits", settings.rate_limit_sync_seconds, runtime.rate_limiter.sync, run_at_shutdown=False
            )
        )
        runtime.jobs += runtime.experiments.jobs()
        runtime.jobs.append(
            PeriodicJob(
                "webhooks",
                settings.webhook_dispatch_interval_seconds,
                runtime.webhooks.run_once,
                shared=True,
                run_at_shutdown=False,
            )
        )
        runtime.jobs += runtime.completions.jobs()
        runtime.jobs += runtime.evals.jobs()
        runtime.jobs += runtime.rollouts.jobs()
        runtime.jobs += runtime.alerts.jobs()
        if redis is None:
            runtime.change_log = ChangeLogReader(sessionmaker, bus)
            runtime.jobs += runtime.change_log.jobs(settings.change_log_poll_seconds)
        runtime.jobs = [job for job in runtime.jobs if job.runs_in(settings.role)]
        if settings.metrics_dir:
            runtime.process_group_metrics = ProcessGroupMetrics(metrics_registry, Path(settings.metrics_dir))
            runtime.jobs.append(PeriodicJob("metrics-snapshot", 1.0, runtime.process_group_metrics.publish_async))
        return runtime

    async def start(self) -> None:
        freeze_what_lives_on()
        # Open change feeds end as soon as a stop is requested, so the server's drain does not wait on them.
        # The worker role takes no traffic, so it has nothing to drain.
        drain_seconds = 0.0 if self.settings.role == "worker" else self.settings.shutdown_drain_seconds
        self._stop_signal = StopSignalHook(self._stop_requested, drain_seconds=drain_seconds)
        self._stop_signal.install()
        await self.bus.start()
        if self.change_log is not None:
            await self.change_log.start()
        await self.experiments.start()
        self._stopping = False
        self._tasks = [asyncio.create_task(self._every(job), name=job.name) for job in self.jobs]

    def _stop_requested(self) -> None:
        self.draining = True
        self.feed.close()

    async def stop(self) -> None:
        """End open change feeds, stop jobs, then run flush jobs once more so buffered data is written."""
        if self._stop_signal is not None:
            self._stop_signal.remove()
        self.feed.close()
        await self._stop_jobs()
        # A reload under way ends rather than being cancelled mid-statement (see JOB_STOP_WAIT_SECONDS).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.experiments.router.settled(), self.job_stop_wait_seconds)
        await self.experiments.stop()
        await self.evals.stop()  # gives its runs' leases up, for another worker to take over at once
        # Completions left before their first token are recorded once their prompts are counted.
        if self.completions.prefill is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.completions.prefill.settled(), self.job_stop_wait_seconds)
        if self.settings.is_sqlite:
            await self._await_sqlite_write_lock()
        for job in self.jobs:
            if not job.run_at_shutdown:
                continue
            try:
                await job.run()
            except Exception:
                logger.exception("final flush failed", job=job.name)
        await self.http.close()
        await self.webhooks.close()
        await self.completions.cache.settled()  # deletions of cached answers a store_io change started
        await self.bus.stop()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()

    async def _stop_jobs(self) -> None:
        """Cancel the jobs that sleep; let those in a run end it (up to ``job_stop_wait_seconds``), then cancel."""
        self._stopping = True
        for task in self._tasks:
            if task not in self._running_jobs:
                task.cancel()
        if not self._tasks:
            return
        _, overran = await asyncio.wait(self._tasks, timeout=self.job_stop_wait_seconds)
        for task in overran:
            logger.warning("background job still running at stop; cancelled", job=task.get_name())
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A cancelled task keeps its error's traceback, which can hold the cursor of a statement it was cancelled in.
        self._tasks = []

    async def _await_sqlite_write_lock(self) -> None:
        """Wait until no connection of this process holds SQLite's write lock any more.

        A task cancelled while its statement ran in aiosqlite's thread leaves the statement's cursor alive:
        its connection's close then leaves the connection open (SQLite closes it, and drops its lock, once
        the last statement is finalised). Collecting the cancelled task's frames finalises it; the close
        itself runs in that thread once the statement ends, so this polls, up to ``SQLITE_LOCK_WAIT_SECONDS``.
        A lock another process holds waits the same bound, as the final flushes would.
        """
        path = self.engine.url.database
        if not path or path == ":memory:" or path.startswith("file:"):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SQLITE_LOCK_WAIT_SECONDS
        while not await asyncio.to_thread(_sqlite_write_lock_free, path):
            if loop.time() >= deadline:
                logger.warning("database still locked at stop; final flushes may fail", database=path)
                return
            gc.collect()
            await asyncio.sleep(0.05)

    async def _every(self, job: PeriodicJob) -> None:
        task = cast("asyncio.Task[None]", asyncio.current_task())
        failures = 0  # in a row
        while not self._stopping:
            await asyncio.sleep(job.interval)
            self._running_jobs.add(task)
            try:
                await job.run()
            except Exception:
                self.job_failures.labels(job.name).inc()
                failures += 1
                if failure_is_logged(failures):
                    logger.exception("background job failed", job=job.name, consecutive_failures=failures)
            else:
                if failures:
                    logger.info("background job recovered", job=job.name, consecutive_failures=failures)
                failures = 0
            finally:
                self._running_jobs.discard(task)


def _sqlite_write_lock_free(path: str) -> bool:
    """Whether SQLite's write lock on ``path`` can be taken now (it is released at once)."""
    connection = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def runtime_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Runtime:
    """The app's runtime; the request-context middleware puts it in the scope, which is cheaper than app.state."""
    runtime: Runtime | None = connection.scope["state"].get("runtime")
    return runtime if runtime is not None else cast("Runtime", connection.app.state.runtime)
