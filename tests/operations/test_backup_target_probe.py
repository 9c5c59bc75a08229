"""``registry backup FILE`` writes over an earlier backup only: naming the database (``registry backup
registry.db``, read as "back up registry.db") or any other file is refused and leaves it as it was."""

from __future__ import annotations

from pathlib import Path

from tests.operations.test_backup_cli import run
from tests.operations.test_backup_cli import workdir as workdir  # the fixture


def test_a_backup_naming_the_database_file_is_refused_and_the_database_kept(workdir: Path) -> None:
    assert run("registry.db", "migrate", "--bootstrap-admin-key")[0] == 0
    before = (workdir / "registry.db").read_bytes()
    code, output = run("registry.db", "backup", "registry.db")
    assert (code, output.strip()) == (
        4,
        "error: registry.db exists and is not a registry backup (the database itself?): name a new file for the "
        "archive",
    )
    assert (workdir / "registry.db").read_bytes() == before
    assert run("registry.db", "backup", "backup.tar.gz")[0] == 0  # the database still opens


def test_another_file_is_refused_but_an_earlier_backup_or_an_empty_file_is_written_over(workdir: Path) -> None:
    assert run("registry.db", "migrate", "--bootstrap-admin-key")[0] == 0
    (workdir / "notes.tar.gz").write_text("not an archive")
    assert run("registry.db", "backup", "notes.tar.gz")[0] == 4
    assert (workdir / "notes.tar.gz").read_text() == "not an archive"
    assert run("registry.db", "backup", "backup.tar.gz")[0] == 0
    assert run("registry.db", "backup", "backup.tar.gz")[0] == 0  # yesterday's archive, replaced
    (workdir / "empty.tar.gz").touch()
    assert run("registry.db", "backup", "empty.tar.gz")[0] == 0
    assert run("restored.db", "restore", "empty.tar.gz")[0] == 0
