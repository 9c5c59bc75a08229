"""On SQLite the hot paths' reads on a cache miss take no write lock: they read while another process writes.

Each read begins deferred (``READ_ONLY``); a read that began ``BEGIN IMMEDIATE`` would queue behind the
writer (here it fails at once: the busy timeout is short).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prompt_registry_client.templating import RenderLimits
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.auth.verifier import ApiKeyVerifier
from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.changes import ChangeBus
from registry.openai_compat.service import ConfigResolver, ModelTarget
from registry.prompts.catalog import PromptCatalog
from registry.settings import Settings
from tests.api import create_config, create_prompt, create_version, promote
from tests.embedded import embedded_settings, serve_embedded

_BUSY_TIMEOUT_MS = 50  # how long a read that wants the write lock waits for it before failing


@pytest.fixture
async def settings_and_admin(tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    """A SQLite database holding the prompt ``greet`` (version 1 a draft, 2 in production), the config ``cfg``."""
    settings = embedded_settings(tmp_path)
    async with serve_embedded(settings) as (client, admin):
        await create_prompt(client, admin, "greet")
        await create_version(client, admin, "greet")
        await create_version(client, admin, "greet", template="Hi {{ name }}")
        await promote(client, admin, "greet", 2)
        await create_config(client, admin, "cfg")
    return settings, admin


@pytest.fixture
async def sessionmaker(
    settings_and_admin: tuple[Settings, dict[str, str]],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The registry's SQLite engine (transactions begin as the server's do), waiting only briefly for a lock."""
    engine = create_engine(settings_and_admin[0])

    def short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")  # after the engine's own pragmas

    event.listen(engine.sync_engine, "connect", short_busy_timeout)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def write_lock_held(settings_and_admin: tuple[Settings, dict[str, str]], tmp_path: Path) -> Iterator[None]:
    """Another connection (as another process would) holds SQLite's write lock throughout the test."""
    writer = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE prompts SET description = 'being edited' WHERE name = 'greet'")
    try:
        yield
    finally:
        writer.rollback()
        writer.close()


@pytest.mark.usefixtures("write_lock_held")
async def test_an_api_key_is_verified_while_another_connection_holds_the_write_lock(
    sessionmaker: async_sessionmaker[AsyncSession], settings_and_admin: tuple[Settings, dict[str, str]]
) -> None:
    verifier = ApiKeyVerifier(sessionmaker, ChangeBus(None, "changes"), cache_seconds=60)

    principal = await verifier.authenticate(settings_and_admin[1]["Authorization"])

    assert principal.name == "admin"


@pytest.mark.usefixtures("write_lock_held")
async def test_a_prompt_and_an_unlabelled_version_resolve_while_another_connection_holds_the_write_lock(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    catalog = PromptCatalog(
        sessionmaker, ChangeBus(None, "changes"), ttl=60, degraded_ttl=5, max_prompts=8, limits=RenderLimits()
    )

    production = await catalog.resolve("greet")
    draft = await catalog.resolve("greet", version=1)  # not labelled: read on its own

    assert (production.version.number, draft.version.number) == (2, 1)


@pytest.mark.usefixtures("write_lock_held")
async def test_a_config_model_resolves_while_another_connection_holds_the_write_lock(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    resolver = ConfigResolver(sessionmaker, ChangeBus(None, "changes"), ttl=60, degraded_ttl=5, max_entries=8)

    config = await resolver(ModelTarget("config", "cfg", version=1))

    assert (config.name, config.version, resolver.reads) == ("cfg", 1, 1)
