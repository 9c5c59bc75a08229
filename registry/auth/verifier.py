"""Authenticates API keys on every request without a database round trip when warm.

Verified keys are cached for ``api_key_cache_seconds``; a revocation reaches
every replica at once through the change bus. ``last_used_at`` is buffered
and written in batches rather than on each request.

When the database cannot be reached to verify a key again, a key this process
verified within ``api_key_stale_seconds`` keeps working, so cached renders go
on through a database outage. That holds only while revocations still arrive
(the change bus is connected): a revoked key is dropped at once and then needs
the database, as does a key never seen before (503).

Reads of key ids the database has not confirmed to this process pass through
``UnknownKeyLookups`` (registry.auth.lookups), which bounds how many a client making
up keys can cause; ids confirmed before are read again without that bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.auth.keys import KEY_PREFIX, generate_key, parse_key, secret_matches
from registry.auth.lookups import UnknownKeyLookups
from registry.auth.principal import Principal
from registry.auth.repository import ApiKeyRepository
from registry.db.base import utcnow
from registry.db.engine import READ_ONLY
from registry.lib.cache import TTLCache
from registry.lib.changes import Change, ChangeBus
from registry.lib.errors import DatabaseUnavailableError, RegistryError, UnauthorizedError, translate_exception
from registry.lib.logging import error_text
from registry.lib.single_flight import SingleFlight

logger = structlog.get_logger("registry.auth")

_NEGATIVE_TTL = 5.0
_STALE_RECHECK_SECONDS = 5.0  # while the database is unreachable, a trusted key is re-checked at most this often
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class _CachedKey:
    secret_hash: str
    principal: Principal
    usable_until: datetime | None  # expiry
    revoked: bool
    loaded_at: float = 0.0  # when the database said so; what the key is trusted from


@dataclass(frozen=True, slots=True)
class _VerifiedHeader:
    principal: Principal
    fresh_until: float  # trusted without the database until then
    stale_until: float  # trusted when the database is unreachable until then
    usable_until: datetime | None  # expiry


_KEY_LENGTH = len(generate_key()[2])
_UNKNOWN_KEY = (
    "unknown API key: no key has this id and secret; check REGISTRY_API_KEY or create one with "
    "'registry keys create --name NAME --scopes read'"
)


def _key_of(authorization: str | None) -> tuple[str, str]:
    """The public id and secret of a ``Bearer`` header, or a 401 saying which part is wrong.

    Only the header's shape is judged here; whether the key exists is the database's answer.
    Revoked and expired are told apart only once the secret matched, to the key's holder.
    """
    if not authorization:
        raise UnauthorizedError(
            "send an API key: Authorization: Bearer <key> (the CLI reads REGISTRY_API_KEY)", headers=_CHALLENGE
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise UnauthorizedError(
            f"the Authorization header uses '{scheme[:20]}'; send 'Bearer <API key>'", headers=_CHALLENGE
        )
    if not token:
        raise UnauthorizedError(
            "the Authorization header has no API key after 'Bearer'; send 'Bearer prk_...'", headers=_CHALLENGE
        )
    parsed = parse_key(token)
    if parsed is not None:
        return parsed
    if token.startswith(f"{KEY_PREFIX}_"):
        raise UnauthorizedError(
            f"malformed API key: keys are {_KEY_LENGTH} characters, prk_<12-character id>_<43-character secret>, "
            f"and this one has {len(token)}; check it was copied whole",
            headers=_CHALLENGE,
        )
    raise UnauthorizedError(
        "not a prompt-registry API key (keys begin with 'prk_'); check REGISTRY_API_KEY", headers=_CHALLENGE
    )


# Cached for unknown public ids, so a flood of made-up keys does not reach the database.
_UNKNOWN = _CachedKey("", Principal(0, "", "", frozenset()), None, True)


class ApiKeyVerifier:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: ChangeBus,
        *,
        cache_seconds: float,
        stale_seconds: float = 3600.0,
        max_entries: int = 10_000,
        unknown_lookups: UnknownKeyLookups | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._bus = bus
        self._clock = clock
        self._cache: TTLCache[str, _CachedKey] = TTLCache(max_entries, clock)
        self._loading: SingleFlight[str, _CachedKey] = SingleFlight()  # one read per key however many miss it
        self._generation = 0  # changes seen: a read that a change overlapped is not cached
        self._cache_seconds = cache_seconds
        self._stale_seconds = max(stale_seconds, cache_seconds)
        self._last_used: dict[int, float] = {}
        # Verified Authorization headers, so a warm request skips parsing and hashing. Only a header
        # whose secret matched is ever stored here.
        self._verified: dict[str, _VerifiedHeader] = {}
        self._max_entries = max_entries
        self._trusting_stale = False
        self._unknown_lookups = unknown_lookups
        # Public ids the database said exist: read again without ``unknown_lookups``' bound. Only the
        # database adds to it, so made-up keys cannot crowd a valid key out of it.
        self._known_ids: dict[str, None] = {}
        bus.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        if change.kind == "api_key":
            self._cache.pop(change.name)
            self._loading.forget(change.name)
            self._verified = {h: v for h, v in self._verified.items() if v.principal.public_id != change.name}
        elif change.kind == "reset":
            # Changes may have been missed: every key is verified in the database again, stale ones too.
            self._cache.clear()
            self._loading.forget_all()
            self._verified.clear()
        else:
            return
        self._generation += 1

    async def authenticate(self, authorization: str | None) -> Principal:
        verified = self._verified.get(authorization) if authorization else None
        if verified is not None:
            if verified.usable_until is not None and verified.usable_until <= utcnow():
                del self._verified[authorization]  # type: ignore[arg-type]
                verified = None
            elif verified.fresh_until > self._clock():
                self._last_used[verified.principal.key_id] = time.time()
                return verified.principal
        try:
            return await self._authenticate(authorization)
        except DatabaseUnavailableError:
            # Trusted only while revocations still arrive: a revoked key has left ``_verified`` by then.
            if authorization is None or verified is None or verified.stale_until <= self._clock():
                raise
            if not self._bus.connected:
                raise
            return self._trust_stale(authorization, verified)

    async def still_valid(self, authorization: str | None) -> bool:
        """Whether a key let in earlier may go on with a response that outlives its check (the change feed):
        False once it was revoked or expired (or deleted); True while the database cannot say."""
        try:
            await self.authenticate(authorization)
        except UnauthorizedError:
            return False
        except RegistryError:  # the database unreachable (or failing): revocations heard meanwhile still end it
            return True
        return True

    def _trust_stale(self, authorization: str, verified: _VerifiedHeader) -> Principal:
        """Serve a key verified before the database became unreachable; ask the database again in a while."""
        if not self._trusting_stale:
            logger.warning("database unreachable; API keys verified earlier are trusted until it is back")
            self._trusting_stale = True
        recheck_at = min(self._clock() + _STALE_RECHECK_SECONDS, verified.stale_until)
        self._verified[authorization] = _VerifiedHeader(
            verified.principal, recheck_at, verified.stale_until, verified.usable_until
        )
        self._last_used[verified.principal.key_id] = time.time()
        return verified.principal

    async def _authenticate(self, authorization: str | None) -> Principal:
        public_id, secret = _key_of(authorization)
        generation = self._generation
        cached = self._cache.get(public_id)
        if cached is None:
            cached = await self._loading.load(public_id, lambda: self._load_bounded(public_id))
        if not secret_matches(secret, cached.secret_hash):
            raise UnauthorizedError(_UNKNOWN_KEY, headers=_CHALLENGE)
        if cached.revoked:
            raise UnauthorizedError("this API key was revoked; ask an admin for a new one", headers=_CHALLENGE)
        if cached.usable_until is not None and cached.usable_until <= utcnow():
            raise UnauthorizedError(
                f"this API key expired at {cached.usable_until.isoformat()}; ask an admin for a new one",
                headers=_CHALLENGE,
            )
        self._last_used[cached.principal.key_id] = time.time()
        # Only the header as clients write it is kept: the key's holder could otherwise fill the table with
        # spellings of one key ("bearer", more spaces) until it is cleared, and every other key with it, which
        # during a database outage is every key's trust (and a 503 for each).
        canonical = authorization == f"Bearer {KEY_PREFIX}_{public_id}_{secret}"
        if self._stale_seconds > 0 and authorization is not None and canonical and generation == self._generation:
            if len(self._verified) >= self._max_entries:
                self._verified.clear()
            self._verified[authorization] = _VerifiedHeader(
                cached.principal,
                cached.loaded_at + self._cache_seconds,
                cached.loaded_at + self._stale_seconds,
                cached.usable_until,
            )
        return cached.principal

    async def _load_bounded(self, public_id: str) -> _CachedKey:
        lookups = self._unknown_lookups
        if lookups is None or public_id in self._known_ids:
            return await self._load(public_id)
        await lookups.enter()
        try:
            return await self._load(public_id)
        finally:
            lookups.leave()

    async def _load(self, public_id: str) -> _CachedKey:
        generation = self._generation
        try:
            async with self._sessionmaker() as session:
                await session.connection(execution_options=READ_ONLY)  # no write lock on SQLite for a read
                key = await ApiKeyRepository(session).get_by_public_id(public_id)
        except (SQLAlchemyError, OSError) as exc:
            raise translate_exception(exc) from exc
        self._trusting_stale = False
        keep = generation == self._generation  # else a change (a revocation) overlapped the read
        if key is None:
            self._known_ids.pop(public_id, None)
            if keep:
                self._cache.set(public_id, _UNKNOWN, _NEGATIVE_TTL)
            return _UNKNOWN
        entry = _CachedKey(
            secret_hash=key.secret_hash,
            principal=Principal(key.id, key.public_id, key.name, frozenset(key.scopes), key.rate_limit_per_minute),
            usable_until=key.expires_at,
            revoked=key.revoked_at is not None,
            loaded_at=self._clock(),
        )
        if public_id not in self._known_ids and len(self._known_ids) >= self._max_entries:
            del self._known_ids[next(iter(self._known_ids))]
        self._known_ids[public_id] = None
        if self._cache_seconds > 0 and keep:
            self._cache.set(public_id, entry, self._cache_seconds)
        return entry

    async def flush_last_used(self) -> None:
        """Write buffered last-used times; on failure they are kept for the next flush."""
        if not self._last_used:
            return
        pending, self._last_used = self._last_used, {}
        try:
            async with self._sessionmaker() as session, session.begin():
                await ApiKeyRepository(session).set_last_used(
                    {key_id: datetime.fromtimestamp(at, UTC) for key_id, at in pending.items()}
                )
        except Exception as exc:
            for key_id, at in pending.items():
                self._last_used.setdefault(key_id, at)
            logger.warning("could not record API key use; will retry", error=error_text(exc))
