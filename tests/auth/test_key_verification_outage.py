"""API keys during a database outage, with the default settings and a fake clock.

A key verified before the outage keeps working past ``api_key_cache_seconds`` (up to
``api_key_stale_seconds``), a revocation still reaches it through Redis, and a key never seen
before gets 503. The outage is the verifier's sessionmaker pointing at a port where nothing listens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry.auth.keys import parse_key
from registry.auth.verifier import ApiKeyVerifier
from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.changes import Change, ChangeBus
from registry.lib.errors import DatabaseUnavailableError
from registry.settings import Settings
from tests.conftest import KeyFactory, free_port

DEFAULTS = Settings.model_fields
CACHE_SECONDS = float(DEFAULTS["api_key_cache_seconds"].default)
STALE_SECONDS = float(DEFAULTS["api_key_stale_seconds"].default)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Database:
    """A sessionmaker that can be switched to an unreachable server, as in an outage."""

    def __init__(self, up: async_sessionmaker[AsyncSession], down: async_sessionmaker[AsyncSession]) -> None:
        self.up, self.down = up, down
        self.reachable = True

    def __call__(self) -> AsyncSession:
        return (self.up if self.reachable else self.down)()


@pytest.fixture
async def database(settings: Settings, clean_database: AsyncEngine) -> AsyncIterator[Database]:
    engines = [create_engine(settings)]
    unreachable = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none"
    engines.append(create_engine(settings.model_copy(update={"database_connect_timeout": 1.0}), url=unreachable))
    yield Database(create_sessionmaker(engines[0]), create_sessionmaker(engines[1]))
    for engine in engines:
        await engine.dispose()


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[ChangeBus]:
    """The change bus of a replica, subscribed to Redis."""
    redis = Redis.from_url(cast(str, settings.redis_url))
    subscribed = ChangeBus(redis, f"{settings.redis_key_prefix}changes")
    resubscribed = asyncio.Event()
    subscribed.subscribe(lambda change: resubscribed.set() if change.kind == "reset" else None)
    await subscribed.start()
    await asyncio.wait_for(resubscribed.wait(), 10)
    yield subscribed
    await subscribed.stop()
    await redis.aclose()


def verifier_for(database: Database, bus: ChangeBus, clock: FakeClock) -> ApiKeyVerifier:
    sessionmaker = cast("async_sessionmaker[AsyncSession]", database)
    return ApiKeyVerifier(sessionmaker, bus, cache_seconds=CACHE_SECONDS, stale_seconds=STALE_SECONDS, clock=clock)


def authorization(headers: dict[str, str]) -> str:
    return headers["Authorization"]


def test_the_defaults_trust_a_key_for_a_minute_and_through_an_outage_for_an_hour() -> None:
    assert (CACHE_SECONDS, STALE_SECONDS) == (60.0, 3600.0)


async def test_a_key_verified_before_an_outage_keeps_working_through_it(
    database: Database, bus: ChangeBus, make_key: KeyFactory
) -> None:
    clock = FakeClock()
    verifier = verifier_for(database, bus, clock)
    known = authorization(await make_key(name="known"))
    never_seen = authorization(await make_key(name="never-seen"))
    principal = await verifier.authenticate(known)

    database.reachable = False
    served = []
    for _ in range(int(STALE_SECONDS // CACHE_SECONDS) - 1):
        clock.advance(CACHE_SECONDS)
        served.append(await verifier.authenticate(known))

    assert served == [principal] * len(served)
    with pytest.raises(DatabaseUnavailableError):
        await verifier.authenticate(never_seen)
    clock.advance(CACHE_SECONDS)  # an hour after it was last verified
    with pytest.raises(DatabaseUnavailableError):
        await verifier.authenticate(known)


async def test_after_the_outage_the_key_is_verified_in_the_database_again(
    database: Database, bus: ChangeBus, make_key: KeyFactory
) -> None:
    clock = FakeClock()
    verifier = verifier_for(database, bus, clock)
    known = authorization(await make_key(name="known"))
    await verifier.authenticate(known)
    database.reachable = False
    clock.advance(STALE_SECONDS - 1)
    await verifier.authenticate(known)

    database.reachable = True
    clock.advance(CACHE_SECONDS)
    await verifier.authenticate(known)  # verified again: trusted for another hour from now
    database.reachable = False
    clock.advance(STALE_SECONDS - 1)

    assert (await verifier.authenticate(known)).name == "known"


async def test_a_revocation_through_redis_stops_a_trusted_key_during_an_outage(
    settings: Settings, database: Database, bus: ChangeBus, make_key: KeyFactory
) -> None:
    clock = FakeClock()
    verifier = verifier_for(database, bus, clock)
    known = authorization(await make_key(name="known"))
    await verifier.authenticate(known)
    database.reachable = False
    clock.advance(CACHE_SECONDS)
    await verifier.authenticate(known)

    arrived = asyncio.Event()
    bus.subscribe(lambda change: arrived.set() if change.kind == "api_key" else None)
    redis: Any = Redis.from_url(cast(str, settings.redis_url))
    other_replica = ChangeBus(redis, f"{settings.redis_key_prefix}changes")
    public_id = cast(tuple[str, str], parse_key(known.removeprefix("Bearer ")))[0]
    await other_replica.publish(Change("api_key", public_id, "revoked"))
    await redis.aclose()
    await asyncio.wait_for(arrived.wait(), 10)

    with pytest.raises(DatabaseUnavailableError):
        await verifier.authenticate(known)


async def test_without_the_change_bus_a_stale_key_is_not_trusted(
    settings: Settings, database: Database, make_key: KeyFactory
) -> None:
    """Revocations cannot arrive while the Redis subscription is down, so the database must answer."""
    clock = FakeClock()
    redis = Redis.from_url(cast(str, settings.redis_url))
    disconnected = ChangeBus(redis, f"{settings.redis_key_prefix}changes")  # never subscribed
    verifier = verifier_for(database, disconnected, clock)
    known = authorization(await make_key(name="known"))
    await verifier.authenticate(known)
    database.reachable = False
    clock.advance(CACHE_SECONDS + 1)

    with pytest.raises(DatabaseUnavailableError):
        await verifier.authenticate(known)
    await redis.aclose()
