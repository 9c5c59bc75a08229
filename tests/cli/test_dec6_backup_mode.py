"""``registry backup`` writes an archive only its owner can read: it holds webhook secrets and key hashes."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

from registry.operations.archive import MANIFEST, writing


def test_the_archive_is_readable_by_its_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "registry.tar.gz"
    (tmp_path / "registry.tar.gz.partial").write_bytes(b"left by a crashed backup")
    os.chmod(tmp_path / "registry.tar.gz.partial", 0o644)
    old = os.umask(0o022)
    try:
        with writing(target) as writer:
            writer.pack(target, {"tables": {}})
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry.tar.gz"]
    with tarfile.open(target) as archive:
        assert archive.getnames() == [MANIFEST]
