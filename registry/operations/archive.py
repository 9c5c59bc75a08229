"""The archive file: a gzipped tar of ``manifest.json`` (first) and one JSON Lines member per table.

Members are written to temporary files one row at a time (hashed and counted on the way), then packed;
the archive appears under its name only once complete. Reading streams each member line by line and
checks its row count and SHA-256 against the manifest at its end.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from registry.operations.errors import ArchiveNotFoundError, InvalidArchiveError
from registry.operations.tables import FORMAT_VERSION

FORMAT_NAME = "prompt-registry-backup"
# What reading a cut or altered gzip/tar stream raises (gzip's EOFError on a file that breaks off: click would
# report it as "Aborted!"), so each becomes the archive's own error.
UNREADABLE = (EOFError, zlib.error, tarfile.TarError, OSError)
MANIFEST = "manifest.json"


def member_name(table: str) -> str:
    return f"tables/{table}.jsonl"


@dataclass
class MemberWriter:
    """One table's JSON Lines file, counted and hashed as it is written."""

    path: Path
    handle: IO[bytes]
    rows: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        self.handle.write(line)
        self.digest.update(line)
        self.rows += 1


class ArchiveWriter:
    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.members: dict[str, MemberWriter] = {}

    @contextmanager
    def table(self, name: str) -> Iterator[MemberWriter]:
        path = self.staging / f"{name}.jsonl"
        with path.open("wb") as handle:
            member = MemberWriter(path, handle)
            yield member
        self.members[name] = member

    def table_entries(self) -> dict[str, dict[str, Any]]:
        return {
            name: {"member": member_name(name), "rows": m.rows, "sha256": m.digest.hexdigest()}
            for name, m in self.members.items()
        }

    def pack(self, target: Path, manifest: dict[str, Any]) -> None:
        partial = target.with_name(target.name + ".partial")
        try:
            # Readable by its owner only: the archive holds webhook secrets and key hashes, and a umask
            # of 022 would make it readable by every user of the host.
            partial.unlink(missing_ok=True)  # a crashed backup's file keeps its mode when opened again
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(descriptor, "wb") as sink, tarfile.open(fileobj=sink, mode="w:gz") as tar:
                data = json.dumps(manifest, indent=2, sort_keys=True).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                for name, member in self.members.items():
                    tar.add(member.path, arcname=member_name(name), recursive=False)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


def is_backup(path: Path) -> bool:
    """Whether ``path`` is a registry backup archive, read only as far as its first member (its manifest)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
            handle = tar.extractfile(first) if first is not None and first.name == MANIFEST else None
            manifest = json.load(handle) if handle is not None else None
    except (ValueError, *UNREADABLE):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME


def may_write_over(path: Path) -> bool:
    """Whether a backup may be written to ``path``: nothing there yet, an empty file, or an earlier backup."""
    if not path.exists():
        return True
    return path.is_file() and (path.stat().st_size == 0 or is_backup(path))


@contextmanager
def writing(target: Path) -> Iterator[ArchiveWriter]:
    """A writer whose staging folder sits beside the target (same disk), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=".registry-backup-", dir=target.parent) as staging:
        yield ArchiveWriter(Path(staging))


class ArchiveReader:
    def __init__(self, tar: tarfile.TarFile, manifest: dict[str, Any]) -> None:
        self.tar = tar
        self.manifest = manifest

    def rows(self, table: str) -> Iterator[dict[str, Any]]:
        """The table's rows; raises at the end when the member does not match the manifest."""
        entry = self.manifest["tables"][table]
        try:
            handle = self.tar.extractfile(entry["member"]) if entry["member"] in self.tar.getnames() else None
            if handle is None:
                raise InvalidArchiveError(f"the archive lacks {entry['member']}, which its manifest lists")
            digest = hashlib.sha256()
            count = 0
            for line in handle:
                digest.update(line)
                count += 1
                yield json.loads(line)
        except UNREADABLE as exc:
            raise InvalidArchiveError(f"the archive breaks off or is corrupt in {entry['member']} ({exc})") from exc
        if count != entry["rows"] or digest.hexdigest() != entry["sha256"]:
            raise InvalidArchiveError(
                f"{entry['member']} does not match the manifest ({count} rows read, {entry['rows']} listed, "
                "or its checksum differs): the archive is damaged"
            )


@contextmanager
def reading(path: Path) -> Iterator[ArchiveReader]:
    if not path.is_file():
        raise ArchiveNotFoundError(f"no backup archive at {path}")
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as exc:
        raise InvalidArchiveError(f"{path} is not a registry backup (not a tar archive)") from exc
    with tar:
        try:
            handle = tar.extractfile(MANIFEST)
            manifest = json.load(handle) if handle is not None else None
        except UNREADABLE as exc:
            raise InvalidArchiveError(f"{path} cannot be read to its end: the archive is cut short or damaged") from exc
        except (KeyError, ValueError) as exc:
            raise InvalidArchiveError(f"{path} is not a registry backup (no readable {MANIFEST})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise InvalidArchiveError(f"{path} is not a registry backup (its manifest names no {FORMAT_NAME})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise InvalidArchiveError(
                f"{path} is a backup of format {manifest.get('format_version')}; this release reads {FORMAT_VERSION}"
            )
        yield ArchiveReader(tar, manifest)
