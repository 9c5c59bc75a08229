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

from registry.app import create_app
from registry.settings import Settings
from tests.completions.conftest import backend, fault, serve_in_thread  # noqa: F401 - the stand-in, shared
from tests.completions.fault_server import FaultServer

Served = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def served(settings: Settings, clean_database: AsyncEngine, fault: FaultServer) -> AsyncIterator[Served]:  # noqa: F811
    """Start the registry (real router) on the stand-in as backends ``fault`` and ``flaky`` (no retries)."""
    stack = ExitStack()
    clients: list[httpx.AsyncClient] = []

    async def factory(**overrides: Any) -> httpx.AsyncClient:
        url = fault.url  # type: ignore[attr-defined]
        backends = {"fault": backend(url), "flaky": backend(url, max_retries=0)}
        app = create_app(settings.model_copy(update={"backends": backends, **overrides}))
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
