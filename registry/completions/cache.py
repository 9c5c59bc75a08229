"""Exact-match cache of deterministic completions: Redis when configured, else in-process.

A cache failure is never a request failure: Redis errors count as misses.

Privacy, as the semantic cache's rule (``registry.completions.semantic_privacy``): the completion path neither
stores in nor reads from this cache for a prompt whose ``store_io`` is false, nor for a ``config:`` model of the
OpenAI door (no prompt, so no storage policy to allow it: its completions keep no texts either).

Each entry remembers its prompt and the ``unit_digest`` of the unit whose request stored it, so that

- turning the prompt's ``store_io`` off deletes the prompt's entries (``forget_prompt``, on the prompt's
  ``store_io_off`` change, which every replica hears once the change commits), and
- the same for the entries of a prompt that read another's text: a model guard's classifier caches its verdicts
  on the guarded prompt's text, so they are that prompt's entries too (``set``'s ``covering``) and go with them, and
- erasing the unit (``erase_unit``, called by ``registry.experiments.privacy``) deletes the unit's.

In Redis, an index per prompt and one per digest (sets of the keys stored) are written in the same script as the
entry, their expiry pushed to the cache's TTL on each write, so they outlive every entry they name; this holds while
Redis does not evict keys before they expire (``maxmemory-policy noeviction``, or memory enough): an eviction policy
may drop an index before its entries, which then live on until their TTL. In-process, the entry itself carries its
prompts and digest, and each replica drops its own entries when it hears of the change (``on_change``).

A completion may be in flight when its prompt's ``store_io`` goes off or its unit is erased, and try to store its
answer after the deletion. So a deletion first leaves a tombstone (Redis key, or in-process) that refuses every
write for that prompt or unit for ``IN_FLIGHT_SECONDS``, longer than any completion runs; in Redis the write checks
the tombstones in the same script that writes, so a write lands either before the deletion (and is deleted) or
after the tombstone (and is refused). Turning ``store_io`` back on lifts the prompt's tombstone; an erased unit's
identical requests are simply not cached again until its tombstone expires.

An entry answers the same request whoever sends it; erasing the unit that stored it deletes it (the next
request asks the model again), and an identical request of another unit stores it afresh under that unit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from registry.experiments.privacy_digest import ERASURE_IN_FLIGHT_SECONDS, unit_digest
from registry.lib.cache import TTLCache
from registry.lib.changes import Change, record_change
from registry.lib.errors import ServiceUnavailableError
from registry.lib.logging import error_text

logger = structlog.get_logger("registry.completions.cache")

# Actions of a "prompt" change: its storage policy stopped (or started) keeping inputs and outputs.
STORE_IO_OFF = "store_io_off"
STORE_IO_ON = "store_io_on"

# How long a deletion's tombstone refuses writes: longer than any completion runs (each attempt ends within its
# backend's total_timeout, 120 s by default, and a completion makes at most a few, with its fallback's).
IN_FLIGHT_SECONDS = ERASURE_IN_FLIGHT_SECONDS

# KEYS: the entry, then (index, tombstone) for the prompt and for the unit where the write has them.
# ARGV: the entry, its TTL in ms, its key, and how many (index, tombstone) pairs follow the entry in KEYS.
# An index's expiry is only ever pushed out: a replica with a shorter TTL (lowered, rolled out one replica at a time)
# must not cut short an index that names another's longer-lived entry, which the erasure would then miss.
_WRITE = """
local pairs = tonumber(ARGV[4])
local ttl = tonumber(ARGV[2])
for i = 1, pairs do
    if redis.call('EXISTS', KEYS[2 * i + 1]) == 1 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 1, pairs do
    redis.call('SADD', KEYS[2 * i], ARGV[3])
    if redis.call('PTTL', KEYS[2 * i]) < ttl then
        redis.call('PEXPIRE', KEYS[2 * i], ttl)
    end
end
return 1
"""


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


def _decoded(key: str, raw: bytes | str | None) -> CachedCompletion | None:
    """The entry kept under ``key``; None for none, or for one this code cannot read (another release's format, or
    anything else written under the key), which is a miss as an unreachable Redis is, not a failed completion. The
    unit's erasure still deletes it (by its index), and the model's answer overwrites it."""
    if not raw:
        return None
    try:
        return _decoder.decode(raw.encode() if isinstance(raw, str) else raw)
    except msgspec.DecodeError as exc:  # ValidationError is one
        logger.warning("response cache entry unreadable; treated as a miss", key=key, error=error_text(exc))
        return None


def record_storage_policy(session: AsyncSession, prompt: str, *, store_io: bool) -> None:
    """The prompt's ``store_io`` changed: once that commits, every replica's exact cache deletes the prompt's
    entries (off) or stores them again (on)."""
    record_change(session, Change("prompt", prompt, STORE_IO_ON if store_io else STORE_IO_OFF))


class ResponseCache:
    def __init__(self, redis: Redis | None, prefix: str, *, ttl: float, max_local: int = 10_000) -> None:
        self._redis = redis
        self._prefix = f"{prefix}completion:"
        self._units = f"{prefix}completion-unit:"  # + unit digest: the keys its requests stored
        self._prompts = f"{prefix}completion-prompt:"  # + prompt name: the keys its requests stored
        self._erased = f"{prefix}completion-erased:"  # + "unit:" digest or "prompt:" name: a deletion's tombstone
        self.ttl = ttl
        # key -> (entry, the prompts whose storage policy covers it, digest of the unit whose request stored it)
        self._local: TTLCache[str, tuple[bytes, tuple[str, ...], str | None]] = TTLCache(max_local)
        self._local_erased: TTLCache[str, bool] = TTLCache(max_local)  # in-process tombstones, named as in Redis
        self._write = None if redis is None else redis.register_script(_WRITE)
        self._purges: set[asyncio.Task[None]] = set()

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
            logger.warning("response cache unavailable", error=error_text(exc))
            return None
        return _decoded(key, raw)

    async def set(
        self,
        key: str,
        value: CachedCompletion,
        *,
        unit: str | None = None,
        prompt: str | None = None,
        covering: Sequence[str] = (),
    ) -> None:
        """Keep the answer, unless the entries of its prompts or its unit's were deleted since it was asked for.

        ``covering`` names other prompts whose storage policy covers the answer too (a model guard's verdict is on
        its guarded prompt's text): it is indexed under them as well, and goes when their ``store_io`` goes off.
        """
        raw = _encoder.encode(value)
        digest = None if unit is None else unit_digest(unit)
        prompts = tuple(dict.fromkeys(p for p in (prompt, *covering) if p))
        indexed: list[tuple[str, str]] = []  # (index, tombstone mark) of each prompt and of the unit
        indexed += [(self._prompts + name, f"prompt:{name}") for name in prompts]
        if digest is not None:
            indexed.append((self._units + digest, f"unit:{digest}"))
        if self._redis is None or self._write is None:
            if not any(self._local_erased.get(mark) for _, mark in indexed):
                self._local.set(key, (raw, prompts, digest), self.ttl)
            return
        keys = [self._prefix + key]
        for index, mark in indexed:
            keys += [index, self._erased + mark]
        try:
            await self._write(keys=keys, args=[raw, max(1, int(self.ttl * 1000)), key, len(indexed)])
        except (RedisError, OSError) as exc:
            logger.warning("response cache unavailable", error=error_text(exc))

    async def _delete_indexed(self, index: str, mark: str) -> int:
        """Leave the tombstone, then delete the entries the index names and the index; returns how many were there.

        The tombstone comes first: a write after it is refused, and one before it is in the index read after.
        """
        assert self._redis is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._erased + mark, 1, px=int(IN_FLIGHT_SECONDS * 1000))
            pipe.smembers(index)
            _, members = await pipe.execute()
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in members]
        deleted = int(await self._redis.delete(*(self._prefix + k for k in keys))) if keys else 0
        await self._redis.delete(index)
        return deleted

    def _forget_locally(self, mark: str, covers: Callable[[tuple[bytes, tuple[str, ...], str | None]], bool]) -> int:
        self._local_erased.set(mark, True, IN_FLIGHT_SECONDS)
        return self._local.pop_values_where(covers)

    def _forget_prompt_locally(self, prompt: str) -> int:
        return self._forget_locally(f"prompt:{prompt}", lambda kept: prompt in kept[1])

    def _forget_unit_locally(self, digest: str) -> int:
        return self._forget_locally(f"unit:{digest}", lambda kept: kept[2] == digest)

    async def erase_unit(self, unit: str) -> int:
        """Delete the entries stored from the unit's requests; returns how many were still there.

        Raises ``CacheUnavailableError`` when Redis cannot be reached, so the erasure fails whole rather than
        report entries gone that are not.
        """
        digest = unit_digest(unit)
        if self._redis is None:
            return self._forget_unit_locally(digest)
        try:
            return await self._delete_indexed(self._units + digest, f"unit:{digest}")
        except (RedisError, OSError) as exc:
            raise CacheUnavailableError(
                "the completion cache could not be reached to delete the unit's cached answers; nothing was "
                "erased, try again"
            ) from exc

    async def entries_of_unit(self, unit: str) -> list[tuple[CachedCompletion, float]]:
        """The entries stored from the unit's requests (what ``erase_unit`` deletes), each with the seconds it has
        left, for the unit's access request.

        Raises ``CacheUnavailableError`` when Redis cannot be reached, so the unit's data is not shown without them.
        """
        digest = unit_digest(unit)
        if self._redis is None:
            kept = self._local.fresh_where(lambda entry: entry[2] == digest)
            return [(_decoder.decode(entry[0]), left) for entry, left in kept]
        try:
            members = await self._redis.smembers(self._units + digest)
            keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in members)
            if not keys:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(self._prefix + key)
                    pipe.pttl(self._prefix + key)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CacheUnavailableError(
                "the completion cache could not be reached to read the unit's cached answers; try again"
            ) from exc
        found: list[tuple[CachedCompletion, float]] = []
        for key, raw, left in zip(keys, replies[::2], replies[1::2], strict=True):
            entry = _decoded(key, raw)  # none: an index outlives the entries it names by up to a TTL
            if entry is not None:
                found.append((entry, max(0, left) / 1000))
        return found

    def on_unit_erased(self, digest: str) -> None:
        """A unit, of ``unit_digest`` ``digest``, was erased: drop what this replica keeps in-process (Redis was
        cleared by the erasure)."""
        if self._redis is None:
            self._forget_unit_locally(digest)

    async def forget_prompt(self, prompt: str) -> int:
        """Delete the prompt's entries (its ``store_io`` went off); returns how many were there."""
        if self._redis is None:
            return self._forget_prompt_locally(prompt)
        return await self._delete_indexed(self._prompts + prompt, f"prompt:{prompt}")

    async def keep_prompt(self, prompt: str) -> int:
        """The prompt's ``store_io`` is on again: its answers may be stored again. Returns how many entries were left.

        In Redis, whatever the index still names was stored before ``store_io`` went off (none is stored while it
        is off): entries that deletion missed (Redis unreachable then) or one in flight that it did not refuse (no
        tombstone was left). They are deleted before the tombstone is lifted, or they would be served again for
        the rest of their TTL. A replica that follows the change later deletes the first new answers too, which
        costs only those.
        """
        if self._redis is None:  # the deletion dropped them at once, and cannot have failed
            self._local_erased.pop(f"prompt:{prompt}")
            return 0
        left = await self._delete_indexed(self._prompts + prompt, f"prompt:{prompt}")
        await self._redis.delete(self._erased + f"prompt:{prompt}")
        return left

    def on_change(self, change: Change) -> None:
        """A prompt's storage policy changed (committed, here or on another replica): follow it.

        In-process at once; in Redis in a task of its own (change handlers do not wait), which every replica runs
        alike (deleting twice deletes nothing more). A Redis failure leaves the entries to their TTL: they are not
        read meanwhile, since the completion path reads no entry of a prompt whose ``store_io`` is off, and turning
        it on again deletes them first (``keep_prompt``).
        """
        if change.kind != "prompt" or change.action not in (STORE_IO_OFF, STORE_IO_ON):
            return
        if self._redis is None:
            if change.action == STORE_IO_OFF:
                self._forget_prompt_locally(change.name)
            else:
                self._local_erased.pop(f"prompt:{change.name}")
            return
        task = asyncio.get_running_loop().create_task(self._follow_policy(change))
        self._purges.add(task)
        task.add_done_callback(self._purges.discard)

    async def _follow_policy(self, change: Change) -> None:
        try:
            if change.action == STORE_IO_OFF:
                deleted = await self.forget_prompt(change.name)
                logger.info("deleted a prompt's cached completions", prompt=change.name, entries=deleted)
            else:
                left = await self.keep_prompt(change.name)
                if left:
                    logger.info(
                        "deleted a prompt's cached completions left from before", prompt=change.name, entries=left
                    )
        except (RedisError, OSError) as exc:
            logger.warning("could not follow a prompt's storage policy in the cache", error=error_text(exc))

    async def settled(self) -> None:
        """Wait for the storage-policy changes heard so far to be carried out (tests, shutdown)."""
        while self._purges:
            await asyncio.gather(*self._purges, return_exceptions=True)
