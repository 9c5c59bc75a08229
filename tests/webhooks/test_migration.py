"""Migration 0016 adds the disabling columns to existing webhooks, enabled and with no failures, and goes back."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.db import migrate
from registry.db.engine import create_engine
from registry.settings import Settings

DISABLING = {"consecutive_failures", "failing_since", "disabled_at", "disabled_reason"}


async def webhook_columns(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("webhooks")})


async def test_0016_keeps_existing_webhooks_enabled_and_goes_down_again_on_sqlite(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", redis_url=None)
    engine = create_engine(settings)
    try:
        assert await migrate.upgrade(engine, "0015") == "0015"
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO webhooks (url, event_types, secret, description, created_at, created_by) "
                    "VALUES ('https://example.com/hook', '[\"*\"]', 'whsec_x', '', '2026-12-01 00:00:00', 'admin')"
                )
            )
        assert not await webhook_columns(engine) & DISABLING

        assert await migrate.upgrade(engine, "0016") == "0016"
        assert await webhook_columns(engine) >= DISABLING
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT url, consecutive_failures, failing_since, disabled_at, disabled_reason FROM webhooks")
                )
            ).one()
        assert tuple(row) == ("https://example.com/hook", 0, None, None, None)

        assert await migrate.downgrade(engine, "0015") == "0015"
        assert not await webhook_columns(engine) & DISABLING
        async with engine.connect() as connection:
            assert (
                await connection.execute(text("SELECT url FROM webhooks"))
            ).scalar_one() == "https://example.com/hook"
    finally:
        await engine.dispose()
