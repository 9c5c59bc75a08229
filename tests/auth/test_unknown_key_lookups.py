"""Made-up API keys (well formed, unknown ids) cost a bounded number of database reads.

Reads are counted, not timed: the verifier's clock and the bound's clock are a fake one. A key
verified before is never refused because of the made-up ones, even while their bound is reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from litestar import Litestar
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from registry.app import create_app
from registry.auth.keys import Scope, generate_key, parse_key
from registry.auth.lookups import KeyLookupsBusyError, UnknownKeyLookups
from registry.auth.models import ApiKey
from registry.auth.repository import ApiKeyRepository
from registry.auth.verifier import ApiKeyVerifier
from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.changes import ChangeBus
from registry.lib.errors import UnauthorizedError
from registry.settings import Settings
from tests.auth.test_key_verification_outage import FakeClock
from tests.conftest import KeyFactory, openai_problem, problem, serve_in_process

CACHE_SECONDS = 60.0
REFUSED = "registry_api_key_lookups_refused_total"


@pytest.fixture
async def sessionmaker(
    settings: Settings, clean_database: AsyncEngine
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


class Reads:
    """Counts the verifier's reads of keys by public id; reads of ids that ``held`` picks wait for ``release``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, held: Callable[[str], bool] = lambda _: False) -> None:
        self.ids: list[str] = []
        self.release = asyncio.Event()
        self.held = 0
        self._held_more = asyncio.Event()
        real = ApiKeyRepository.get_by_public_id

        async def get_by_public_id(repository: ApiKeyRepository, public_id: str) -> ApiKey | None:
            self.ids.append(public_id)
            if held(public_id):
                self.held += 1
                self._held_more.set()
                await self.release.wait()
            return await real(repository, public_id)

        monkeypatch.setattr(ApiKeyRepository, "get_by_public_id", get_by_public_id)

    async def holding(self, count: int) -> None:
        """Return once ``count`` reads are held."""
        while self.held < count:
            self._held_more.clear()
            await self._held_more.wait()


async def settled(task: asyncio.Task[object]) -> None:
    """Let ``task`` run as far as it goes without I/O (a refusal needs none; a held read never ends)."""
    for _ in range(20):
        if task.done():
            return
        await asyncio.sleep(0)


def made_up_key() -> str:
    return f"Bearer {generate_key()[2]}"


def public_id(header: str) -> str:
    parsed = parse_key(header.removeprefix("Bearer "))
    assert parsed is not None
    return parsed[0]


async def test_made_up_keys_past_the_rate_bound_are_refused_without_reading_the_database(
    sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, metrics = FakeClock(), CollectorRegistry()
    lookups = UnknownKeyLookups(per_second=10, concurrency=0, registry=metrics, clock=clock)
    verifier = ApiKeyVerifier(
        sessionmaker, ChangeBus(None, "changes"), cache_seconds=CACHE_SECONDS, unknown_lookups=lookups, clock=clock
    )
    reads = Reads(monkeypatch)

    outcomes = await asyncio.gather(*(verifier.authenticate(made_up_key()) for _ in range(100)), return_exceptions=True)

    assert len(reads.ids) == 10
    assert sum(isinstance(o, UnauthorizedError) for o in outcomes) == 10
    busy = [o for o in outcomes if isinstance(o, KeyLookupsBusyError)]
    assert len(busy) == 90
    assert busy[0].status_code == 503
    assert busy[0].headers == {"Retry-After": "1"}
    assert metrics.get_sample_value(REFUSED, {"bound": "rate"}) == 90

    clock.advance(0.5)  # half a second refills half the bucket
    await asyncio.gather(*(verifier.authenticate(made_up_key()) for _ in range(20)), return_exceptions=True)
    assert len(reads.ids) == 15


async def test_a_verified_key_passes_while_made_up_keys_are_at_both_bounds(
    sessionmaker: async_sessionmaker[AsyncSession], make_key: KeyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, metrics = FakeClock(), CollectorRegistry()
    lookups = UnknownKeyLookups(per_second=4, concurrency=2, max_waiting=1, registry=metrics, clock=clock)
    verifier = ApiKeyVerifier(
        sessionmaker, ChangeBus(None, "changes"), cache_seconds=CACHE_SECONDS, unknown_lookups=lookups, clock=clock
    )
    header = (await make_key(name="app"))["Authorization"]
    principal = await verifier.authenticate(header)  # its id is now one the database confirmed
    valid_id = public_id(header)
    reads = Reads(monkeypatch, held=lambda read: read != valid_id)

    flood = [asyncio.create_task(verifier.authenticate(made_up_key())) for _ in range(2)]
    try:
        await reads.holding(2)
        third = asyncio.create_task(verifier.authenticate(made_up_key()))
        flood.append(third)
        await settled(third)
        assert not third.done()  # queued behind the reads in flight
        assert lookups.waiting == 1
        fourth = asyncio.create_task(verifier.authenticate(made_up_key()))
        flood.append(fourth)
        await settled(fourth)
        assert fourth.done()  # past the queue: refused at once
        assert isinstance(fourth.exception(), KeyLookupsBusyError)
        assert metrics.get_sample_value(REFUSED, {"bound": "concurrency"}) == 1

        assert await verifier.authenticate(header) == principal  # cached
        clock.advance(CACHE_SECONDS + 1)
        assert await verifier.authenticate(header) == principal  # read again, past the bound the flood holds
        assert reads.ids.count(valid_id) == 1
    finally:
        reads.release.set()
        outcomes = await asyncio.gather(*flood, return_exceptions=True)
    assert all(isinstance(o, UnauthorizedError) for o in outcomes[:3])
    # The rate bound spent by made-up keys, one after another, once the verified key's cache expired again.
    clock.advance(CACHE_SECONDS + 1)
    made_up_reads = len(reads.ids)
    outcomes = []
    for _ in range(5):
        try:
            await verifier.authenticate(made_up_key())
        except (UnauthorizedError, KeyLookupsBusyError) as exc:
            outcomes.append(type(exc))
    assert outcomes == [UnauthorizedError] * 4 + [KeyLookupsBusyError]  # one second's worth, however long idle
    assert len(reads.ids) - made_up_reads == 4
    assert metrics.get_sample_value(REFUSED, {"bound": "rate"}) == 1
    assert await verifier.authenticate(header) == principal
    assert reads.ids.count(valid_id) == 2


async def test_a_cold_process_serves_the_first_uses_of_more_keys_than_its_reads_at_once(
    sessionmaker: async_sessionmaker[AsyncSession], make_key: KeyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty valid keys used for the first time at once, on a bound of two reads at a time: they queue."""
    lookups = UnknownKeyLookups(per_second=200, concurrency=2, clock=FakeClock())
    verifier = ApiKeyVerifier(
        sessionmaker, ChangeBus(None, "changes"), cache_seconds=CACHE_SECONDS, unknown_lookups=lookups
    )
    headers = [(await make_key(name=f"tenant-{index}"))["Authorization"] for index in range(20)]
    reads = Reads(monkeypatch)

    principals = await asyncio.gather(*(verifier.authenticate(header) for header in headers))

    assert sorted(principal.name for principal in principals) == sorted(f"tenant-{index}" for index in range(20))
    assert len(reads.ids) == 20


async def test_one_made_up_key_repeated_takes_one_read_of_the_bound(
    sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    lookups = UnknownKeyLookups(per_second=1, concurrency=1, clock=clock)
    verifier = ApiKeyVerifier(
        sessionmaker, ChangeBus(None, "changes"), cache_seconds=CACHE_SECONDS, unknown_lookups=lookups, clock=clock
    )
    reads = Reads(monkeypatch)
    header = made_up_key()

    outcomes = await asyncio.gather(*(verifier.authenticate(header) for _ in range(20)), return_exceptions=True)

    assert all(isinstance(o, UnauthorizedError) for o in outcomes)
    assert len(reads.ids) == 1


@pytest.fixture
def bounded_app(settings: Settings, clean_database: AsyncEngine) -> Litestar:
    # One read in the bucket, refilled in 1000 s: the valid key's first use takes it.
    return create_app(settings.model_copy(update={"api_key_unknown_lookups_per_second": 0.001}))


async def test_made_up_keys_past_the_bound_get_a_503_problem_with_retry_after(
    bounded_app: Litestar, make_key: KeyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = await make_key(Scope.READ, name="app")
    async with serve_in_process(bounded_app) as client:
        assert (await client.get("/v1/prompts", headers=header)).status_code == 200
        reads = Reads(monkeypatch)
        refused = await client.get("/v1/prompts", headers={"Authorization": made_up_key()})
        door = await client.get("/v1/models", headers={"Authorization": made_up_key()})
        fast = await client.post(
            "/v1/prompts/greet/render", json={"variables": {}}, headers={"Authorization": made_up_key()}
        )
        allowed = await client.get("/v1/prompts", headers=header)
        metrics = (await client.get("/metrics")).text

    assert refused.status_code == 503
    body = problem(refused)
    assert body["type"] == "/problems/api_key_lookups_busy"
    assert "unknown ids" in body["detail"]
    assert refused.headers["Retry-After"] == "1000"
    assert fast.status_code == 503
    assert problem(fast)["type"] == "/problems/api_key_lookups_busy"
    assert fast.headers["Retry-After"] == "1000"
    assert door.status_code == 503
    assert openai_problem(door)["type"] == "/problems/api_key_lookups_busy"
    assert allowed.status_code == 200
    assert reads.ids == []
    assert 'registry_api_key_lookups_refused_total{bound="rate"} 3.0' in metrics
