"""Unauthenticated operational routes: liveness, readiness, metrics, problem types."""

from __future__ import annotations

import asyncio

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from registry.lib.errors import PROBLEM_TYPES, NotFoundError
from registry.lib.schema import Output
from registry.runtime import Runtime

# Litestar appends the response's charset to text media types; prometheus_client's names it already.
METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8")


class HealthOut(Output):
    status: str


class ReadinessOut(Output):
    status: str  # ready, degraded (serving with a dependency down), not ready, draining
    database: str
    redis: str
    # Running experiments this replica could not load (each routes as last loaded, or not at all). They do not
    # make the replica unready: every replica reads the same rows, so taking this one out would help no one.
    experiments_unloadable: list[str]


UNREADY = frozenset({"not ready", "draining"})
# The longest /ready waits on one dependency (both are checked at once): a probe must wait longer than this, or a
# hung database reads as a failed check even where the answer would have been 200 degraded.
READINESS_CHECK_SECONDS = 2.0


def readiness(*, database_up: bool, redis_up: bool, prompts_cached: bool, draining: bool) -> str:
    """Whether this replica can serve its read path: cached prompts still render while the database is down."""
    if draining:
        return "draining"
    if not database_up and not prompts_cached:
        return "not ready"
    if not (database_up and redis_up):
        return "degraded"
    return "ready"


async def _database_state(runtime: Runtime) -> str:
    try:
        async with asyncio.timeout(READINESS_CHECK_SECONDS), runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


async def _redis_state(runtime: Runtime) -> str:
    if runtime.redis is None:
        return "not configured"
    try:
        async with asyncio.timeout(READINESS_CHECK_SECONDS):
            await runtime.redis.ping()
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


class ProblemTypeOut(Output):
    type: str
    title: str
    status: int
    description: str


class SystemController(Controller):
    path = "/"
    tags = ["operations"]
    include_in_schema = True

    @get("/health", operation_id="health", summary="The process is up")
    async def health(self) -> HealthOut:
        return HealthOut(status="ok")

    @get(
        "/ready",
        operation_id="ready",
        summary="This replica can serve its read path; each dependency's state",
        description="200 `ready`, or 200 `degraded` while the database or Redis is unreachable but the replica "
        "still serves (from its cache, without cross-replica invalidation). 503 only when it cannot serve (the "
        "database is unreachable and nothing is cached) and while it drains after SIGTERM.",
        responses={503: ResponseSpec(ReadinessOut, description="Cannot serve, or draining; each dependency named.")},
    )
    async def ready(self, runtime: NamedDependency[Runtime]) -> Response[ReadinessOut]:
        database, redis = await asyncio.gather(_database_state(runtime), _redis_state(runtime))
        status = readiness(
            database_up=database == "ok",
            redis_up=not redis.startswith("unavailable"),
            prompts_cached=runtime.prompts.loaded > 0,
            draining=runtime.draining,
        )
        body = ReadinessOut(
            status=status,
            database=database,
            redis=redis,
            experiments_unloadable=runtime.experiments.router.unloadable,
        )
        return Response(body, status_code=503 if status in UNREADY else 200)

    @get("/metrics", operation_id="metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics(self, runtime: NamedDependency[Runtime]) -> Response[bytes]:
        group = runtime.process_group_metrics
        body = group.exposition() if group is not None else generate_latest(runtime.metrics_registry)
        return Response(body, media_type=METRICS_MEDIA_TYPE)

    @get("/problems/{problem_type:str}", operation_id="problemType", summary="What a problem type means")
    async def problem_type(self, problem_type: FromPath[str]) -> ProblemTypeOut:
        error = PROBLEM_TYPES.get(problem_type)
        if error is None:
            raise NotFoundError(f"no problem type '{problem_type}'")
        return ProblemTypeOut(
            type=f"/problems/{error.type}",
            title=error.title,
            status=error.status_code,
            description=" ".join((error.__doc__ or "").split()),
        )
