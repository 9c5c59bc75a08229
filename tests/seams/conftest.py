"""Fixtures for tests where features meet: the registry with its real experiment router on a real port.

The completions ``registry`` fixture replaces the router with a stub; rollouts and experiments route
through the real one, so these tests serve the app as an operator runs it, on the stand-in backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.completions.conftest import backend, fault, serve_in_thread  # noqa: F401 - the stand-in, shared
from tests.completions.fault_server import FaultServer
from tests.conftest import fresh_app

Served = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def served(settings: Settings, clean_database: AsyncEngine, fault: FaultServer) -> AsyncIterator[Served]:  # noqa: F811
    """Start the registry (real router) on the stand-in as backends ``fault`` and ``flaky`` (no retries)."""
    stack = ExitStack()
    clients: list[httpx.AsyncClient] = []

    async def factory(**overrides: Any) -> httpx.AsyncClient:
        url = fault.url  # type: ignore[attr-defined]
        backends = {"fault": backend(url), "flaky": backend(url, max_retries=0)}
        app = stack.enter_context(fresh_app(settings.model_copy(update={"backends": backends, **overrides})))
        base = stack.enter_context(serve_in_thread(app))
        clients.append(httpx.AsyncClient(base_url=base, timeout=30))
        return clients[-1]

    yield factory
    for client in clients:
        await client.aclose()
    stack.close()


async def ok(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    if status is None:
        assert response.status_code in (200, 201), response.text
    else:
        assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def started_experiment(
    client: httpx.AsyncClient, admin: dict[str, str], key: str, treatment_config: dict[str, Any] | None = None
) -> None:
    """Metric ``converted`` and experiment ``key`` on prompt ``greet``, started: ``control`` runs version 1 and
    ``treatment`` version 2 (with ``treatment_config``, a config reference, when given)."""
    await ok(await client.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=admin))
    treatment: dict[str, Any] = {"key": "treatment", "prompt_version": 2}
    if treatment_config is not None:
        treatment["config"] = treatment_config
    experiment = {
        "key": key,
        "prompt": "greet",
        "variants": [{"key": "control", "prompt_version": 1}, treatment],
        "primary_metric": "converted",
    }
    await ok(await client.post("/v1/experiments", json=experiment, headers=admin))
    await ok(await client.post(f"/v1/experiments/{key}/start", headers=admin))


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, tries: int = 250) -> None:
    """Poll ``condition`` (the server runs on another thread's loop); fail after ``tries`` polls."""
    for _ in range(tries):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still waiting for {what}")


async def rows(engine: AsyncEngine, query: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in (await connection.execute(text(query), params)).all()]
