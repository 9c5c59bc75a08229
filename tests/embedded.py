"""The embedded default (a SQLite file, no Redis, role all) served in the test's process with an admin key.

Tests of what only SQLite shows build it the same way: settings for a file under the test's
``tmp_path``, migrations applied with Alembic, an admin key created before the app starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from registry.db import migrate
from registry.db.engine import create_engine
from registry.settings import Settings
from tests.conftest import AppClient, create_key, fresh_app, serve_in_process


def embedded_settings(tmp_path: Path, **fields: Any) -> Settings:
    """Settings for a SQLite file in ``tmp_path``, quiet, without the bootstrap key; ``fields`` add to them."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        access_log=False,
        log_level="WARNING",
        bootstrap_admin_key=False,
        **fields,
    )


@asynccontextmanager
async def serve_embedded(settings: Settings) -> AsyncIterator[tuple[AppClient, dict[str, str]]]:
    """Migrate the database ``settings`` names (SQLite or PostgreSQL), create an admin key, serve the app.

    Yields the client and the admin key's Authorization header.
    """
    engine = create_engine(settings)
    try:
        await migrate.upgrade(engine)
        admin = await create_key(engine, (Scope.ADMIN,), "admin")
    finally:
        await engine.dispose()
    with fresh_app(settings) as app:
        async with serve_in_process(app) as client:
            yield client, admin


@asynccontextmanager
async def serve_on_engine_kind(
    engine: AsyncEngine, settings: Settings, tmp_path: Path, **fields: Any
) -> AsyncIterator[tuple[AppClient, dict[str, str]]]:
    """``serve_embedded`` on a database of ``engine``'s kind (the ``migrated_engine`` fixture's), with ``fields``.

    PostgreSQL: the test's ``settings``; SQLite: ``embedded_settings`` on the file ``migrated_engine`` made.
    """
    if engine.dialect.name == "sqlite":
        chosen = embedded_settings(tmp_path, **fields)
    else:
        chosen = settings.model_copy(update=fields)
    async with serve_embedded(chosen) as client_and_admin:
        yield client_and_admin
