"""Evaluations against the real PostgreSQL and a stand-in backend whose answers the items script."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import BackendSettings, Settings
from tests.completions.conftest import backend, serve_in_thread
from tests.conftest import AppClient, fresh_app, serve_in_process
from tests.evals.stand_in import StandIn
from tests.waiting import eventually_async

Headers = dict[str, str]


@pytest.fixture(scope="session")
def stand_in() -> Iterator[tuple[StandIn, str]]:
    server = StandIn()
    with serve_in_thread(server, lifespan="off") as url:
        yield server, url


@pytest.fixture
async def evals(
    settings: Settings, clean_database: AsyncEngine, stand_in: tuple[StandIn, str]
) -> AsyncIterator[AppClient]:
    """The registry with the stand-in as backend ``stand-in``; its in-process worker polls often."""
    server, url = stand_in
    server.requests.clear()
    server.released.clear()
    server.up.clear()
    async with registry_on(settings, {"stand-in": backend(url, max_retries=0, breaker_cooldown=0.05)}) as client:
        yield client


@contextlib.asynccontextmanager
async def registry_on(settings: Settings, backends: dict[str, BackendSettings]) -> AsyncIterator[AppClient]:
    """The registry served with ``backends``; its in-process worker polls often."""
    with fresh_app(settings.model_copy(update={"backends": backends, "eval_poll_seconds": 0.02})) as app:
        async with serve_in_process(app) as client:
            yield client


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201, 202), response.text
    body: dict[str, Any] = response.json()
    return body


async def publish(
    client: httpx.AsyncClient,
    headers: Headers,
    prompt: str,
    *,
    template: str = "{{ answer }}",
    model: str = "echo",
    config: str | None = None,
    input_schema: dict[str, Any] | None = None,
    prices: tuple[float, float] = (0.0, 0.0),
    fallback: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    guards: list[dict[str, Any]] | None = None,
) -> int:
    """A config on the stand-in and a new version of ``prompt`` linked to it; returns the prompt version."""
    config = config or f"{prompt}-config"
    if (await client.get(f"/v1/configs/{config}/versions", headers=headers)).status_code == 404:
        await ok(await client.post("/v1/configs", json={"name": config}, headers=headers))
    version = await ok(
        await client.post(
            f"/v1/configs/{config}/versions",
            json={
                "backend": "stand-in",
                "model": model,
                "params": params if params is not None else {"temperature": 0, "max_tokens": 64},
                "input_price_per_mtok": prices[0],
                "output_price_per_mtok": prices[1],
                **({"fallback": fallback} if fallback else {}),
                **({"guards": guards} if guards else {}),
            },
            headers=headers,
        )
    )
    if (await client.get(f"/v1/prompts/{prompt}/versions", headers=headers)).status_code == 404:
        await ok(await client.post("/v1/prompts", json={"name": prompt}, headers=headers))
    created = await ok(
        await client.post(
            f"/v1/prompts/{prompt}/versions",
            json={
                "kind": "chat",
                "messages": [{"role": "user", "content": template}],
                "input_schema": input_schema,
                "config": {"name": config, "version": version["version"]},
            },
            headers=headers,
        )
    )
    number: int = created["version"]
    return number


async def dataset(client: httpx.AsyncClient, headers: Headers, name: str, items: list[dict[str, Any]]) -> int:
    if (await client.get(f"/v1/evals/datasets/{name}", headers=headers)).status_code == 404:
        await ok(await client.post("/v1/evals/datasets", json={"name": name}, headers=headers))
    version = await ok(await client.post(f"/v1/evals/datasets/{name}/versions", json={"items": items}, headers=headers))
    number: int = version["version"]
    return number


def answers(*pairs: tuple[str, str | None]) -> list[dict[str, Any]]:
    """Items answering ``answer`` and expecting ``expected``."""
    return [{"variables": {"answer": answer}, "expected": expected} for answer, expected in pairs]


async def start_run(client: httpx.AsyncClient, headers: Headers, **fields: Any) -> dict[str, Any]:
    body = {"scorers": [{"kind": "exact_match"}], **fields}
    response = await client.post("/v1/evals/runs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()
    return run


async def finished(client: httpx.AsyncClient, headers: Headers, run_id: int) -> dict[str, Any]:
    """The run once it has completed or failed."""
    latest: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal latest
        latest = (await client.get(f"/v1/evals/runs/{run_id}", headers=headers)).json()
        return latest["status"] in ("completed", "failed")

    await eventually_async(done, f"run {run_id} finishing")
    return latest


RunFactory = Callable[..., Awaitable[dict[str, Any]]]
