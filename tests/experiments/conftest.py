"""Helpers for experiment tests: prompts with versions, metrics, experiments, and the background work on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.experiments.exposures import ExposureBuffer
from registry.runtime import Runtime
from registry.settings import Settings
from tests.completions.conftest import serve_in_thread
from tests.completions.fault_server import FaultServer
from tests.conftest import AppClient

Client = AppClient
T = TypeVar("T")


def runtime_of(app: Litestar) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


async def make_prompt(client: Client, headers: dict[str, str], name: str, versions: int = 2) -> None:
    """A text prompt with ``versions`` versions ("v1 {{ x }}", ...); version 1 in production."""
    response = await client.post("/v1/prompts", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    for number in range(1, versions + 1):
        body = {"kind": "text", "template": f"v{number} says {{{{ x }}}}"}
        response = await client.post(f"/v1/prompts/{name}/versions", json=body, headers=headers)
        assert response.status_code == 201, response.text
    response = await client.post(
        f"/v1/prompts/{name}/versions/1/promote", json={"to": "production", "expected_current": None}, headers=headers
    )
    assert response.status_code == 200, response.text


async def make_metric(client: Client, headers: dict[str, str], key: str, kind: str = "binomial", **extra: Any) -> None:
    response = await client.post("/v1/metrics", json={"key": key, "kind": kind, **extra}, headers=headers)
    assert response.status_code == 201, response.text


def experiment_body(key: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "prompt": prompt,
        "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
        "primary_metric": "converted",
        **extra,
    }


async def make_experiment(
    client: Client, headers: dict[str, str], key: str, prompt: str, *, start: bool = True, **extra: Any
) -> dict[str, Any]:
    response = await client.post("/v1/experiments", json=experiment_body(key, prompt, **extra), headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    if start:
        response = await client.post(f"/v1/experiments/{key}/start", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
    await settle(client)
    return body


async def in_app(client: Client, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` against the app's runtime (the test client serves the app on this event loop)."""
    return await work()


async def settle(client: Client) -> None:
    """Wait until the app's router has applied the changes published so far."""
    await in_app(client, runtime_of(client.app).experiments.router.settled)


async def until_running_here(client: Client, key: str) -> None:
    """Wait until this app's router runs ``key`` (changed by another replica: the news comes through Redis)."""
    router = runtime_of(client.app).experiments.router
    for _ in range(250):
        if router.running(key) is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"experiment {key} did not reach this replica's router")


async def flush_and_aggregate(client: Client) -> None:
    """Write buffered exposures and fold everything queued into the statistics, now."""
    experiments = runtime_of(client.app).experiments

    async def work() -> None:
        await experiments.exposures.flush()
        await experiments.aggregator.drain()

    await in_app(client, work)


async def units_queued_by_a_second_writer(sessionmaker: async_sessionmaker[AsyncSession]) -> set[str]:
    """Two replicas write overlapping exposures one after the other (the aggregator drains the queue in
    between); the units the second one queues. Needs exactly one experiment defined."""
    async with sessionmaker() as session:
        experiment = int((await session.execute(text("SELECT id FROM experiments"))).scalar_one())
    first, second = (ExposureBuffer(sessionmaker, max_pending=100) for _ in range(2))
    for unit in ("user-1", "user-2"):
        first.record(experiment, 1, unit, "control")
    await first.flush()
    async with sessionmaker() as session, session.begin():
        await session.execute(text("DELETE FROM unit_changes"))  # as the aggregator does when it claims them
    second.record(experiment, 1, "user-1", "control")  # stored already: nothing changed for the aggregator
    second.record(experiment, 1, "user-3", "control")  # new, in two variants: queued once
    second.record(experiment, 1, "user-3", "treatment")
    assert await second.flush() == 3
    async with sessionmaker() as session:
        return set((await session.execute(text("SELECT unit FROM unit_changes"))).scalars().all())


@pytest.fixture(scope="session")
def fault() -> Iterator[str]:
    """The stand-in backend (``tests/completions/fault_server.py``): its URL. Model names script what it does."""
    server = FaultServer()
    with serve_in_thread(server, lifespan="off") as url:
        yield url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Background flushes and aggregation only when a test asks (``flush_and_aggregate``), so tests are exact."""
    return settings.model_copy(
        update={"experiment_exposure_flush_seconds": 3600.0, "experiment_statistics_seconds": 3600.0}
    )


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    """A prompt 'greet' with versions 1 (production) and 2, and a binomial metric 'converted'."""
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    return admin
