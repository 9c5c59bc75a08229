"""``registry backup`` and ``registry restore`` on the embedded SQLite default: what each refuses, and its exit code."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli import main


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REGISTRY_REDIS_URL", raising=False)
    return tmp_path


def run(database: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"REGISTRY_DATABASE_URL": f"sqlite+aiosqlite:///./{database}"})
    return result.exit_code, result.output


def backed_up(workdir: Path) -> Path:
    assert run("source.db", "migrate", "--bootstrap-admin-key")[0] == 0
    code, output = run("source.db", "backup", "backup.tar.gz")
    assert code == 0, output
    return workdir / "backup.tar.gz"


def rewrite_manifest(archive: Path, target: Path, **changes: object) -> None:
    with tarfile.open(archive) as source, tarfile.open(target, "w:gz") as out:
        for member in source.getmembers():
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "manifest.json":
                data = json.dumps({**json.loads(data), **changes}).encode()
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))


def test_a_backup_restores_once_and_a_second_restore_into_the_same_database_is_refused(workdir: Path) -> None:
    archive = backed_up(workdir)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest["tables"]["api_keys"]["rows"] == 1
    assert "exposures" not in manifest["tables"]
    code, output = run("target.db", "restore", "backup.tar.gz")
    assert code == 0, output
    code, output = run("target.db", "restore", "backup.tar.gz")
    assert code == 4
    assert output.strip().splitlines() == [
        "error: the database is not empty (api_keys, audit_log hold rows): restore into a new database"
    ]


def test_an_archive_of_an_unknown_newer_schema_is_refused(workdir: Path) -> None:
    rewrite_manifest(backed_up(workdir), workdir / "newer.tar.gz", alembic_revision="9999")
    code, output = run("target.db", "restore", "newer.tar.gz")
    assert code == 6
    assert "schema revision 9999, which this release does not know" in output


def test_an_archive_of_an_older_schema_is_refused(workdir: Path) -> None:
    rewrite_manifest(backed_up(workdir), workdir / "older.tar.gz", alembic_revision="0001")
    code, output = run("target.db", "restore", "older.tar.gz")
    assert code == 6
    assert "older schema revision (0001" in output


def test_a_damaged_member_is_refused_and_nothing_is_restored(workdir: Path) -> None:
    archive = backed_up(workdir)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    tables = manifest["tables"]
    tables["audit_log"] = {**tables["audit_log"], "sha256": "0" * 64}
    rewrite_manifest(archive, workdir / "damaged.tar.gz", tables=tables)
    code, output = run("target.db", "restore", "damaged.tar.gz")
    assert code == 6
    assert "tables/audit_log.jsonl does not match the manifest" in output
    # The keys restored before the damaged member were rolled back: a good archive still loads.
    assert run("target.db", "restore", "backup.tar.gz")[0] == 0


def test_a_file_that_is_not_an_archive_or_not_there_is_refused(workdir: Path) -> None:
    (workdir / "notes.txt").write_text("hello")
    code, output = run("target.db", "restore", "notes.txt")
    assert (code, output.strip()) == (6, "error: notes.txt is not a registry backup (not a tar archive)")
    assert run("target.db", "restore", "missing.tar.gz")[0] == 3


def test_backup_refuses_an_unknown_group(workdir: Path) -> None:
    code, output = run("source.db", "backup", "b.tar.gz", "--include", "exposures,secrets")
    assert code == 2
    assert "unknown secrets" in output


def test_an_archive_that_cannot_be_written_is_one_line(workdir: Path) -> None:
    backed_up(workdir)
    code, output = run("source.db", "backup", "/proc/registry-backup.tar.gz")  # a folder no one can write in
    assert code == 1
    assert len(output.strip().splitlines()) == 1
    assert output.startswith("error: ")
