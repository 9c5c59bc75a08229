"""Requests that miss one prompt in the catalog together share one database read, even if the reader is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from prompt_registry_client.templating import RenderLimits
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.changes import ChangeBus
from registry.prompts.catalog import PromptCatalog
from registry.prompts.repository import PromptCatalogRepository
from registry.settings import Settings
from tests.api import Headers, create_prompt, create_version, promote
from tests.conftest import AppClient

CONCURRENT = 16


@pytest.fixture
async def sessionmaker(
    settings: Settings, client: AppClient, admin: Headers
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a database holding the production prompt ``greet``."""
    await create_prompt(client, admin, "greet")
    await create_version(client, admin, "greet")
    await promote(client, admin, "greet", 1)
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


def catalog_of(sessionmaker: async_sessionmaker[AsyncSession]) -> PromptCatalog:
    bus = ChangeBus(None, "changes")
    return PromptCatalog(sessionmaker, bus, ttl=60, degraded_ttl=5, max_prompts=8, limits=RenderLimits())


class Reads:
    """Counts the catalog's reads of a prompt; the first one waits until cancelled when ``hold_first``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold_first: bool) -> None:
        self.count = 0
        self.first_started = asyncio.Event()
        real = PromptCatalogRepository.load_labelled

        async def load_labelled(repository: PromptCatalogRepository, name: str) -> tuple[Any, Sequence[Any]]:
            self.count += 1
            if self.count == 1 and hold_first:
                self.first_started.set()
                await asyncio.Event().wait()
            return await real(repository, name)

        monkeypatch.setattr(PromptCatalogRepository, "load_labelled", load_labelled)


async def test_concurrent_misses_of_one_prompt_read_it_once(
    sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = catalog_of(sessionmaker)
    reads = Reads(monkeypatch, hold_first=False)

    resolutions = await asyncio.gather(*(catalog.resolve("greet") for _ in range(CONCURRENT)))

    assert {resolution.version.number for resolution in resolutions} == {1}
    assert reads.count == 1


async def test_when_the_request_reading_a_prompt_is_cancelled_the_waiting_requests_still_get_it(
    sessionmaker: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = catalog_of(sessionmaker)
    reads = Reads(monkeypatch, hold_first=True)

    first = asyncio.create_task(catalog.resolve("greet"))
    await reads.first_started.wait()
    waiting = [asyncio.create_task(catalog.resolve("greet")) for _ in range(CONCURRENT - 1)]
    await asyncio.sleep(0)
    first.cancel()
    resolutions = await asyncio.gather(*waiting)

    assert first.cancelled()
    assert {resolution.version.number for resolution in resolutions} == {1}
    assert reads.count == 2  # the cancelled read, then one for all who waited
