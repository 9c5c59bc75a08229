"""A log line names the exception it reports, even one without a message (a timeout's is empty)."""

from __future__ import annotations

from unittest.mock import patch

from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

import registry.completions.cache
from registry.completions.cache import ResponseCache
from registry.lib.logging import error_text


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    assert error_text(TimeoutError()) == "TimeoutError"
    assert error_text(ConnectionRefusedError(111, "Connection refused")) == "[Errno 111] Connection refused"


class _TimingOut(Redis):
    async def get(self, name: object) -> bytes:
        raise RedisTimeoutError()


async def test_the_exact_cache_logs_a_timed_out_redis_by_its_type() -> None:
    cache = ResponseCache(_TimingOut(), "p:", ttl=60)
    with patch.object(registry.completions.cache, "logger") as logger:  # its first use bound it for good
        assert await cache.get("k") is None
    logger.warning.assert_called_once_with("response cache unavailable", error="TimeoutError")
