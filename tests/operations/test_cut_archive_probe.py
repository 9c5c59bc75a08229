"""Restoring an archive that breaks off or whose manifest was edited by hand: a one-line refusal, exit code 6."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.operations.test_backup_cli import backed_up, rewrite_manifest, run
from tests.operations.test_backup_cli import workdir as workdir  # the fixture

CUT_SHORT = "cannot be read to its end: the archive is cut short or damaged"


@pytest.mark.parametrize("keep", [200, 0.5, -40], ids=["inside-the-manifest", "half", "all-but-its-end"])
def test_an_archive_cut_short_is_refused_as_damaged_and_nothing_is_restored(workdir: Path, keep: float) -> None:
    archive = backed_up(workdir)
    data = archive.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    (workdir / "cut.tar.gz").write_bytes(data[:cut])
    assert run("target.db", "migrate")[0] == 0
    code, output = run("target.db", "restore", "cut.tar.gz")
    assert (code, output.strip()) == (6, f"error: cut.tar.gz {CUT_SHORT}")
    assert run("target.db", "restore", "backup.tar.gz")[0] == 0  # nothing of the cut archive was kept


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"groups": [1]}, "the manifest's groups are not a list of names"),
        ({"groups": "core"}, "the manifest's groups are not a list of names"),
        ({"tables": ["api_keys"]}, "the manifest's tables are not an object of table entries"),
        ({"tables": {"api_keys": 5}}, "the manifest's tables are not an object of table entries"),
    ],
    ids=["group-not-a-name", "groups-a-string", "tables-a-list", "table-entry-a-number"],
)
def test_a_manifest_of_the_wrong_shape_is_refused_naming_the_field(
    workdir: Path, changes: dict[str, object], refusal: str
) -> None:
    rewrite_manifest(backed_up(workdir), workdir / "edited.tar.gz", **changes)
    code, output = run("target.db", "restore", "edited.tar.gz")
    assert (code, output.strip()) == (6, f"error: edited.tar.gz: {refusal}")
