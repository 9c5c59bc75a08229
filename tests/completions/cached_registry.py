"""A registry with the exact completion cache on, in the two shapes it runs in, served in the test's process.

``postgresql+redis``: the test's PostgreSQL, the exact cache in Redis, changes on Redis. ``embedded``: a SQLite file,
the exact cache in the process, changes through the database's change log. Served on the test's own event loop, so
a test can reach into the runtime (``client.app.state.runtime``) and wait for what it started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.cache import ResponseCache
from registry.db.engine import create_engine
from registry.settings import Settings
from tests.conftest import AppClient, fresh_app, make_key_on, serve_in_process
from tests.embedded import embedded_settings, serve_embedded

SHAPES = ["postgresql+redis", "embedded"]


@dataclass
class CachedRegistry:
    client: AppClient
    admin: dict[str, str]
    settings: Settings
    engine: AsyncEngine  # the registry's database, for what the API does not show

    @property
    def cache(self) -> ResponseCache:
        cache: ResponseCache = self.client.app.state.runtime.completions.cache
        return cache


@asynccontextmanager
async def serve_cached_registry(
    shape: str, settings: Settings, tmp_path: Path, **fields: Any
) -> AsyncIterator[CachedRegistry]:
    """``settings`` are the test's (PostgreSQL and Redis), used for ``postgresql+redis``; ``fields`` add to either."""
    fields = {"completion_cache_ttl_seconds": 60.0, "completion_usage_flush_seconds": 3600.0, **fields}
    if shape == "embedded":
        chosen = embedded_settings(tmp_path, **fields)
        engine = create_engine(chosen)
        try:
            async with serve_embedded(chosen) as (client, admin):
                yield CachedRegistry(client, admin, chosen, engine)
        finally:
            await engine.dispose()
        return
    chosen = settings.model_copy(update=fields)
    admin = await make_key_on(chosen)
    engine = create_engine(chosen)
    try:
        with fresh_app(chosen) as app:
            async with serve_in_process(app) as client:
                yield CachedRegistry(client, admin, chosen, engine)
    finally:
        await engine.dispose()
