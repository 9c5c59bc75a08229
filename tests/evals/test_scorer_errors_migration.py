"""Migration 0020 lets an item's outcome be ``scorer_error`` (on SQLite by copying ``eval_run_items``, which keeps
every stored outcome) and counts them per run; going back, those outcomes become errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from registry.db import migrate
from registry.db.engine import create_engine
from registry.settings import Settings

NOW = "'2026-12-01 00:00:00'"
RUN = (
    "INSERT INTO eval_runs (id, prompt, prompt_version, config, config_version, dataset_version_id, dataset, "
    "dataset_version, scorers, concurrency, status, total_items, items_done, items_passed, items_invalid, "
    f"items_errored, cost, input_tokens, output_tokens, created_by, created_at) VALUES (1, 'p', 1, 'c', 1, 1, 'd', 1, "
    f"'[]', 1, 'completed', 3, 2, 1, 0, 0, 0, 0, 0, 'admin', {NOW})"
)


def item(position: int, status: str, passed: int) -> str:
    return (
        "INSERT INTO eval_run_items (run_id, position, status, output, scores, score, passed, input_tokens, "
        f"output_tokens, cost, cached, fallback_used, created_at) VALUES (1, {position}, '{status}', 'out', '[]', "
        f"NULL, {passed}, 0, 0, 0, 0, 0, {NOW})"
    )


async def test_0020_keeps_stored_outcomes_takes_scorer_errors_and_goes_down_again_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", redis_url=None))
    try:
        assert await migrate.upgrade(engine, "0019") == "0019"
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO eval_datasets (id, name, description, latest_version, created_at, created_by, "
                    f"updated_at, updated_by) VALUES (1, 'd', '', 1, {NOW}, 'admin', {NOW}, 'admin')"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO eval_dataset_versions (id, dataset_id, number, item_count, content_sha256, "
                    f"commit_message, created_by, created_at) VALUES (1, 1, 1, 3, 'x', '', 'admin', {NOW})"
                )
            )
            await connection.execute(text(RUN))
            await connection.execute(text(item(1, "scored", 1)))
            await connection.execute(text(item(2, "error", 0)))
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(text(item(3, "scorer_error", 0)))

        assert await migrate.upgrade(engine, "0020") == "0020"
        async with engine.begin() as connection:
            await connection.execute(text(item(3, "scorer_error", 0)))
            await connection.execute(text("UPDATE eval_runs SET items_done = 3, items_scorer_errors = 1"))
            statuses = (await connection.execute(text("SELECT status FROM eval_run_items ORDER BY position"))).all()
        assert [s for (s,) in statuses] == ["scored", "error", "scorer_error"]
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(text(item(4, "unknown", 0)))

        assert await migrate.downgrade(engine, "0019") == "0019"
        async with engine.connect() as connection:
            statuses = (await connection.execute(text("SELECT status FROM eval_run_items ORDER BY position"))).all()
            errored = (await connection.execute(text("SELECT items_errored FROM eval_runs"))).scalar_one()
        assert [s for (s,) in statuses] == ["scored", "error", "error"]
        assert errored == 1
    finally:
        await engine.dispose()
