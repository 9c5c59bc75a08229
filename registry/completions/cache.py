"""Exact-match cache of deterministic completions: Redis when configured, else in-process.

A cache failure is never a request failure: Redis errors count as misses.
"""

from __future__ import annotations

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from registry.lib.cache import TTLCache

logger = structlog.get_logger("registry.completions.cache")


class CachedCompletion(msgspec.Struct, array_like=True):
    text: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int


_decoder = msgspec.msgpack.Decoder(CachedCompletion)
_encoder = msgspec.msgpack.Encoder()


class ResponseCache:
    def __init__(self, redis: Redis | None, prefix: str, *, ttl: float, max_local: int = 10_000) -> None:
        self._redis = redis
        self._prefix = f"{prefix}completion:"
        self.ttl = ttl
        self._local: TTLCache[str, bytes] = TTLCache(max_local)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    async def get(self, key: str) -> CachedCompletion | None:
        try:
            raw = self._local.get(key) if self._redis is None else await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            logger.warning("response cache unavailable", error=str(exc))
            return None
        if not raw:
            return None
        return _decoder.decode(raw.encode() if isinstance(raw, str) else raw)

    async def set(self, key: str, value: CachedCompletion) -> None:
        raw = _encoder.encode(value)
        if self._redis is None:
            self._local.set(key, raw, self.ttl)
            return
        try:
            await self._redis.set(self._prefix + key, raw, px=max(1, int(self.ttl * 1000)))
        except (RedisError, OSError) as exc:
            logger.warning("response cache unavailable", error=str(exc))
