"""Operator commands on a database that is not there: one line naming it, the unavailable exit code, no new file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.conftest import free_port

UNAVAILABLE = 7


def run(monkeypatch: pytest.MonkeyPatch, database_url: str, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("REGISTRY_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "command", [["keys", "list"], ["keys", "revoke", "abc"], ["keys", "create", "--name", "x", "--scopes", "read"]]
)
def test_keys_on_a_sqlite_file_that_does_not_exist_say_so_and_create_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    database = tmp_path / "registry.db"
    code, output = run(monkeypatch, f"sqlite+aiosqlite:///{database}", *command)
    assert code == UNAVAILABLE
    assert output.splitlines() == [
        f"error: no database at {database} (REGISTRY_DATABASE_URL=sqlite+aiosqlite:///{database}): "
        "create it with 'registry migrate' or 'registry serve', or set REGISTRY_DATABASE_URL"
    ]
    assert not database.exists()
    assert list(tmp_path.iterdir()) == []


def test_keys_on_a_postgres_that_does_not_answer_name_it_with_the_password_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    code, output = run(monkeypatch, f"postgresql+asyncpg://postgres:s3cret@127.0.0.1:{port}/test", "keys", "list")
    assert code == UNAVAILABLE
    (line,) = output.splitlines()
    assert line.startswith(
        f"error: cannot open the database at postgresql+asyncpg://postgres:***@127.0.0.1:{port}/test: "
    )
    assert "s3cret" not in output
    assert "Traceback" not in output


def test_migrate_still_creates_a_new_sqlite_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    database = tmp_path / "registry.db"
    code, output = run(monkeypatch, f"sqlite+aiosqlite:///{database}", "migrate")
    assert code == 0, output
    assert database.exists()
    code, output = run(monkeypatch, f"sqlite+aiosqlite:///{database}", "keys", "list")
    assert (code, output.splitlines()[-1]) == (0, "(none)")


def test_keys_on_a_database_without_tables_say_to_migrate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    database = tmp_path / "registry.db"
    database.touch()
    code, output = run(monkeypatch, f"sqlite+aiosqlite:///{database}", "keys", "list")
    assert code == UNAVAILABLE
    (line,) = output.splitlines()
    assert line.startswith(f"error: the database at sqlite+aiosqlite:///{database} is not ready (")
    assert line.endswith("): run 'registry migrate'")
