"""The one Redis client of the process, over a blocking connection pool.

The default pool raises "Too many connections" under load; the blocking pool
waits for a free connection instead, bounded by the command timeout.
A command that finds its pooled connection closed (Redis restarted) is retried
once on a new connection, so the first change published after an outage is
not lost.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from registry.settings import Settings


def create_redis(settings: Settings) -> Redis | None:
    if not settings.redis_url:
        return None
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        health_check_interval=30,
        retry=Retry(NoBackoff(), retries=1),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections
