"""``config:`` models resolve from an in-process copy: read once, dropped when the config changes, stale if need be."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.changes import ChangeBus
from registry.openai_compat.fast_path import RESOLVER_STATE
from registry.openai_compat.service import ConfigResolver, ModelTarget
from registry.settings import Settings
from tests.completions.conftest import backend, publish, serve_in_thread, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.openai_compat.conftest import SyncFactory

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def app(settings: Settings, clean_database: AsyncEngine, fault: FaultServer) -> Litestar:
    return create_app(settings.model_copy(update={"backends": {"fault": backend(fault.url)}}))  # type: ignore[attr-defined]


@pytest.fixture
async def served(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    with serve_in_thread(app) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client


async def promote_second_version(client: httpx.AsyncClient, admin: dict[str, str], model: str) -> None:
    body = {"backend": "fault", "model": model, "params": {"max_tokens": 4}}
    assert (await client.post("/v1/configs/cfg/versions", json=body, headers=admin)).status_code == 201
    promote = {"to": "production", "expected_current": 1}
    assert (await client.post("/v1/configs/cfg/versions/2/promote", json=promote, headers=admin)).status_code == 200


async def test_a_config_is_read_once_and_again_when_it_changes(
    app: Litestar, served: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, sdk: SyncFactory
) -> None:
    first_model, second_model = unique("ok"), unique("ok")
    await publish(served, admin, backend="fault", model=first_model, prompt=None)
    openai_client = sdk(served, admin)

    answers = [openai_client.chat.completions.create(model="config:cfg", messages=HI) for _ in range(3)]
    resolver: ConfigResolver = app.state[RESOLVER_STATE]
    reads_before_the_change = resolver.reads
    await promote_second_version(served, admin, second_model)
    after = openai_client.chat.completions.create(model="config:cfg", messages=HI)

    assert reads_before_the_change == 1
    assert [a.model_extra["registry"]["config"]["version"] for a in answers] == [1, 1, 1]  # type: ignore[index]
    assert after.model_extra["registry"]["config"]["version"] == 2  # type: ignore[index]
    assert resolver.reads == 2
    assert len(fault.seen(first_model, CHAT)) == 3
    assert [seen.payload["max_tokens"] for seen in fault.seen(second_model, CHAT)] == [4]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def resolver_parts(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """Sessions on the test database, and on an address where no database listens."""
    engine = create_engine(settings)
    dead = create_engine(settings, url="postgresql+asyncpg://postgres@127.0.0.1:1/test")
    yield {"live": create_sessionmaker(engine), "dead": create_sessionmaker(dead)}
    await engine.dispose()
    await dead.dispose()


async def test_past_its_lifetime_a_config_is_read_again_and_kept_while_the_database_is_away(
    served: httpx.AsyncClient, admin: dict[str, str], resolver_parts: dict[str, Any]
) -> None:
    await publish(served, admin, backend="fault", model=unique("ok"), prompt=None)
    clock = Clock()
    resolver = ConfigResolver(
        resolver_parts["live"], ChangeBus(None, "test"), ttl=10, degraded_ttl=1, max_entries=8, clock=clock
    )
    target = ModelTarget("config", "cfg")

    first = await resolver(target)
    clock.now = 5
    cached = await resolver(target)
    clock.now = 11
    again = await resolver(target)
    resolver.sessionmaker = resolver_parts["dead"]
    clock.now = 30
    stale = await resolver(target)
    with pytest.raises((OSError, SQLAlchemyError)):  # nothing kept to fall back on
        await resolver(ModelTarget("config", "cfg", version=1))

    assert first == cached == again == stale
    assert (first.name, first.version) == ("cfg", 1)
    assert resolver.reads == 4  # the first, past the lifetime, and two failed reads
