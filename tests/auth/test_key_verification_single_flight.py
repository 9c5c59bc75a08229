"""Requests that present a key whose cached verification expired share one database read of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry.auth.keys import parse_key
from registry.auth.models import ApiKey
from registry.auth.repository import ApiKeyRepository
from registry.auth.verifier import ApiKeyVerifier
from registry.db.base import utcnow
from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.changes import Change, ChangeBus
from registry.lib.errors import UnauthorizedError
from registry.settings import Settings
from tests.auth.test_key_verification_outage import FakeClock
from tests.conftest import KeyFactory

CACHE_SECONDS = 60.0
CONCURRENT = 16


@pytest.fixture
async def sessionmaker(
    settings: Settings, clean_database: AsyncEngine
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


class Reads:
    """Counts the verifier's reads of a key; ``hold`` keeps each read from returning until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.done = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        real = ApiKeyRepository.get_by_public_id

        async def get_by_public_id(repository: ApiKeyRepository, public_id: str) -> ApiKey | None:
            self.count += 1
            key = await real(repository, public_id)
            self.done.set()
            await self.release.wait()
            return key

        monkeypatch.setattr(ApiKeyRepository, "get_by_public_id", get_by_public_id)


async def test_concurrent_requests_after_the_cache_expired_read_the_key_once(
    sessionmaker: async_sessionmaker[AsyncSession], make_key: KeyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    verifier = ApiKeyVerifier(sessionmaker, ChangeBus(None, "changes"), cache_seconds=CACHE_SECONDS, clock=clock)
    header = (await make_key(name="app"))["Authorization"]
    principal = await verifier.authenticate(header)
    reads = Reads(monkeypatch)

    clock.now += CACHE_SECONDS + 1
    principals = await asyncio.gather(*(verifier.authenticate(header) for _ in range(CONCURRENT)))

    assert principals == [principal] * CONCURRENT
    assert reads.count == 1


async def test_a_key_revoked_while_it_was_being_read_is_read_again_by_the_next_request(
    sessionmaker: async_sessionmaker[AsyncSession], make_key: KeyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = ChangeBus(None, "changes")
    verifier = ApiKeyVerifier(sessionmaker, bus, cache_seconds=CACHE_SECONDS, clock=FakeClock())
    header = (await make_key(name="app"))["Authorization"]
    parsed = parse_key(header.removeprefix("Bearer "))
    assert parsed is not None
    public_id = parsed[0]
    reads = Reads(monkeypatch)
    reads.release.clear()

    before_revocation = asyncio.create_task(verifier.authenticate(header))
    await reads.done.wait()  # read as it was before the revocation, not yet returned
    async with sessionmaker() as session, session.begin():  # not through the service: its read is held too
        await session.execute(update(ApiKey).where(ApiKey.public_id == public_id).values(revoked_at=utcnow()))
    bus.deliver(Change("api_key", public_id, "revoked"))
    reads.release.set()
    await before_revocation  # in flight before the revocation: let through, as before

    with pytest.raises(UnauthorizedError, match="revoked"):
        await verifier.authenticate(header)
    assert reads.count == 2
