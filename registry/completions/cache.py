"""Exact-match cache of deterministic completions: Redis when configured, else in-process.

A cache failure is never a request failure: Redis errors count as misses.

Privacy, as the semantic cache's rule (``registry.completions.semantic_privacy``): the completion path neither
stores in nor reads from this cache for a prompt whose ``store_io`` is false, nor for a ``config:`` model of the
OpenAI door (no prompt, so no storage policy to allow it: its completions keep no texts either). Entries stored
before a prompt's ``store_io`` went off are never read again while it is off, and expire within the TTL.

Each entry remembers the ``unit_digest`` of the unit whose request stored it, so erasing the unit
(``erase_unit``, called by ``registry.experiments.privacy``) deletes it:

- in Redis, an index per digest (a set of the keys its requests stored) is written in the same ``MULTI`` as the
  entry and its expiry pushed to the cache's TTL on each write, so it outlives every entry it names; this holds
  while Redis does not evict keys before they expire (``maxmemory-policy noeviction``, or memory enough): an
  eviction policy may drop an index before its entries, which then live on until their TTL;
- in-process, the entry itself carries the digest, and each replica drops its own entries when it hears of the
  erasure (``on_unit_erased``, the experiments' ``unit_erased`` change).

An entry answers the same request whoever sends it; erasing the unit that stored it deletes it (the next
request asks the model again), and an identical request of another unit stores it afresh under that unit.
"""

from __future__ import annotations

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from registry.experiments.privacy_digest import unit_digest
from registry.lib.cache import TTLCache
from registry.lib.errors import ServiceUnavailableError

logger = structlog.get_logger("registry.completions.cache")


class CachedCompletion(msgspec.Struct, array_like=True):
    text: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int


class CacheUnavailableError(ServiceUnavailableError):
    """The exact cache's Redis could not be reached to delete a unit's entries, so the erasure is not done."""

    type = "completion_cache_unavailable"
    title = "Completion cache unavailable"


_decoder = msgspec.msgpack.Decoder(CachedCompletion)
_encoder = msgspec.msgpack.Encoder()


class ResponseCache:
    def __init__(self, redis: Redis | None, prefix: str, *, ttl: float, max_local: int = 10_000) -> None:
        self._redis = redis
        self._prefix = f"{prefix}completion:"
        self._units = f"{prefix}completion-unit:"  # + unit digest: the keys its requests stored
        self.ttl = ttl
        # key -> (entry, digest of the unit whose request stored it)
        self._local: TTLCache[str, tuple[bytes, str | None]] = TTLCache(max_local)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    async def get(self, key: str) -> CachedCompletion | None:
        try:
            if self._redis is None:
                kept = self._local.get(key)
                raw: bytes | str | None = None if kept is None else kept[0]
            else:
                raw = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            logger.warning("response cache unavailable", error=str(exc))
            return None
        if not raw:
            return None
        return _decoder.decode(raw.encode() if isinstance(raw, str) else raw)

    async def set(self, key: str, value: CachedCompletion, *, unit: str | None = None) -> None:
        raw = _encoder.encode(value)
        digest = None if unit is None else unit_digest(unit)
        if self._redis is None:
            self._local.set(key, (raw, digest), self.ttl)
            return
        ttl_ms = max(1, int(self.ttl * 1000))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._prefix + key, raw, px=ttl_ms)
                if digest is not None:
                    pipe.sadd(self._units + digest, key)
                    pipe.pexpire(self._units + digest, ttl_ms)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("response cache unavailable", error=str(exc))

    async def erase_unit(self, unit: str) -> int:
        """Delete the entries stored from the unit's requests; returns how many were still there.

        Raises ``CacheUnavailableError`` when Redis cannot be reached, so the erasure fails whole rather than
        report entries gone that are not.
        """
        digest = unit_digest(unit)
        if self._redis is None:
            return self._local.pop_values_where(lambda kept: kept[1] == digest)
        index = self._units + digest
        try:
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in await self._redis.smembers(index)]
            deleted = int(await self._redis.delete(*(self._prefix + k for k in keys))) if keys else 0
            await self._redis.delete(index)
        except (RedisError, OSError) as exc:
            raise CacheUnavailableError(
                "the completion cache could not be reached to delete the unit's cached answers; nothing was "
                "erased, try again"
            ) from exc
        return deleted

    def on_unit_erased(self, unit: str) -> None:
        """Another replica erased the unit: drop what this one keeps in-process (Redis was cleared there)."""
        if self._redis is None:
            self._local.pop_values_where(lambda kept: kept[1] == unit_digest(unit))
