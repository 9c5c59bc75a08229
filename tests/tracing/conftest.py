"""The registry on a real port with a tracing of the test's choosing, and the fault server as its backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.lib.tracing import Tracing
from registry.settings import Settings
from tests.completions.conftest import backend, fault, serve_in_thread
from tests.completions.fault_server import FaultServer
from tests.conftest import fresh_app

__all__ = ["TracedRegistry", "fault", "traced_registry"]


class TracedRegistry:
    """Starts the registry with a given tracing and the fault server as backend ``fault``; stops them all."""

    def __init__(self, settings: Settings, fault: FaultServer) -> None:
        self._settings = settings
        self._fault = fault
        self.apps: list[Litestar] = []
        self._running: list[tuple[Any, httpx.AsyncClient]] = []
        self._routes = ExitStack()  # each app's routes go back to the tests' pool once its server has stopped

    async def __call__(self, tracing: Tracing, **overrides: Any) -> httpx.AsyncClient:
        backends = {"fault": backend(self._fault.url)}  # type: ignore[attr-defined]
        chosen = self._settings.model_copy(update={"backends": backends, **overrides})
        app = self._routes.enter_context(fresh_app(chosen, tracing=tracing))
        served = serve_in_thread(app)
        client = httpx.AsyncClient(base_url=served.__enter__(), timeout=30)
        self.apps.append(app)
        self._running.append((served, client))
        return client

    async def stop(self) -> None:
        for served, client in reversed(self._running):
            await client.aclose()
            served.__exit__(None, None, None)
        self._routes.close()


@pytest.fixture
async def traced_registry(
    settings: Settings, clean_database: AsyncEngine, fault: FaultServer
) -> AsyncIterator[TracedRegistry]:
    registry = TracedRegistry(settings, fault)
    yield registry
    await registry.stop()
