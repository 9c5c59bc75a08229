"""Apply Alembic migrations from code (CLI, server start, tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

# A built wheel carries the migrations inside the package (see pyproject.toml);
# a source checkout has them at the repository root.
_PACKAGED = Path(__file__).resolve().parents[1] / "_migrations"
_SOURCE = Path(__file__).resolve().parents[2]
ALEMBIC_INI, MIGRATIONS = (
    (_PACKAGED / "alembic.ini", _PACKAGED / "migrations")
    if _PACKAGED.is_dir()
    else (_SOURCE / "alembic.ini", _SOURCE / "migrations")
)


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> str | None:
    """Upgrade to ``revision`` (never down: a later database stays as it is); the revision it is at then."""
    return await _run(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> str | None:
    return await _run(engine, lambda config: command.downgrade(config, revision))


async def _run(engine: AsyncEngine, action: Callable[[Config], None]) -> str | None:
    def run(connection: Connection) -> str | None:
        config = alembic_config()
        config.attributes["connection"] = connection
        action(config)
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.begin() as connection:
        return await connection.run_sync(run)
