"""The engine's errors, which are logged, never carry a statement's values (units, prompts, answers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from registry.db.engine import create_engine
from registry.settings import Settings
from tests.conftest import POSTGRES_SERVER_URL

SECRET = "ada@example.com"


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
async def test_a_refused_statement_s_error_names_the_statement_but_not_its_values(
    database: str, tmp_path: Path
) -> None:
    url = POSTGRES_SERVER_URL if database == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'errors.db'}"
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as refused:
                await connection.execute(text("SELECT CAST(:unit AS INTEGER) + nope"), {"unit": SECRET})
    finally:
        await engine.dispose()

    assert "SELECT CAST" in str(refused.value)
    assert SECRET not in str(refused.value)


async def test_with_echo_asked_for_the_values_are_shown(tmp_path: Path) -> None:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'echo.db'}", database_echo=True))
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as refused:
                await connection.execute(text("SELECT CAST(:unit AS INTEGER) + nope"), {"unit": SECRET})
    finally:
        await engine.dispose()

    assert SECRET in str(refused.value)
