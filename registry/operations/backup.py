"""Backup and restore of the registry's state, one consistent snapshot in one archive.

A backup reads every archived table in one transaction: REPEATABLE READ, READ ONLY on PostgreSQL (one
snapshot for all tables, no locks taken), the one write-locked transaction on SQLite. A restore loads an
archive of the same schema revision into an empty, migrated database in one transaction (all or nothing),
parents before children, in batches, then moves PostgreSQL's id sequences past the restored ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from registry import __version__
from registry.db.base import Base, utcnow
from registry.db.migrate import alembic_config
from registry.db.models import __all__ as _every_model  # noqa: F401 (the metadata must hold every table)
from registry.operations import archive
from registry.operations.errors import (
    BackupTargetError,
    DatabaseNotEmptyError,
    InvalidArchiveError,
    SchemaMismatchError,
)
from registry.operations.repository import TableRepository
from registry.operations.tables import FORMAT_VERSION, archived_tables, codecs, decode_row, encode_row, groups_for

RESTORE_BATCH = 1000


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    revision: str | None
    groups: list[str]
    rows: dict[str, int]


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def revision_order() -> list[str]:
    """Revisions from the first to the head."""
    script = ScriptDirectory.from_config(alembic_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


async def backup(engine: AsyncEngine, target: Path, *, include: frozenset[str]) -> BackupSummary:
    """Write the archive; ``include`` names the optional groups (exposures, events, usage).

    An existing file is written over only when it is empty or an earlier backup: ``registry backup registry.db``
    (read as "back up registry.db") replaced the SQLite database itself with its archive."""
    if not archive.may_write_over(target):
        raise BackupTargetError(
            f"{target} exists and is not a registry backup (the database itself?): name a new file for the archive"
        )
    groups = groups_for(include)
    tables = archived_tables(Base.metadata, groups)
    async with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = await connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        async with connection.begin():
            repository = TableRepository(connection)
            revision = await repository.revision()
            created_at = utcnow()
            with archive.writing(target) as writer:
                for table in tables:
                    columns = codecs(table)
                    with writer.table(table.name) as member:
                        async for row in repository.rows(table):
                            member.write(encode_row(row, columns))
                manifest: dict[str, Any] = {
                    "format": archive.FORMAT_NAME,
                    "format_version": FORMAT_VERSION,
                    "registry_version": __version__,
                    "alembic_revision": revision,
                    "created_at": created_at.isoformat(),
                    "dialect": connection.dialect.name,
                    "groups": sorted(groups),
                    "tables": writer.table_entries(),
                }
                writer.pack(target, manifest)
    rows = {name: entry["rows"] for name, entry in manifest["tables"].items()}
    return BackupSummary(target, revision, sorted(groups), rows)


def check_revision(archived: str | None, current: str | None) -> None:
    """Only an archive of this very schema revision loads (no upgrade of archived rows is implemented)."""
    if archived == current:
        return
    order = revision_order()
    if archived not in order:
        raise SchemaMismatchError(
            f"the archive is of schema revision {archived}, which this release does not know (its head is "
            f"{current}): restore it with the release that wrote it"
        )
    raise SchemaMismatchError(
        f"the archive is of an older schema revision ({archived}; this release's is {current}): restore it "
        "with the release that wrote it, then upgrade that database with 'registry migrate'"
    )


async def restore(engine: AsyncEngine, source: Path) -> BackupSummary:
    """Load the archive into the (migrated, empty) database ``engine`` opens; nothing is kept when it fails."""
    with archive.reading(source) as reader:
        manifest = reader.manifest
        revision = manifest.get("alembic_revision")
        groups = manifest.get("groups") or ["core"]
        listed = manifest.get("tables") or {}
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise InvalidArchiveError(f"{source}: the manifest's groups are not a list of names")
        if not isinstance(listed, dict) or not all(isinstance(e, dict) for e in listed.values()):
            raise InvalidArchiveError(f"{source}: the manifest's tables are not an object of table entries")
        try:
            tables = archived_tables(Base.metadata, groups_for(g for g in groups if g not in ("core", "statistics")))
        except ValueError as exc:
            raise InvalidArchiveError(f"{source}: {exc}") from exc
        rows: dict[str, int] = {}
        async with engine.begin() as connection:
            repository = TableRepository(connection)
            check_revision(revision, await repository.revision())
            filled = await repository.non_empty(list(Base.metadata.sorted_tables))
            if filled:
                raise DatabaseNotEmptyError(
                    f"the database is not empty ({', '.join(filled[:5])}{'...' if len(filled) > 5 else ''} "
                    "hold rows): restore into a new database"
                )
            for table in tables:
                if table.name not in listed:
                    raise InvalidArchiveError(f"the archive's manifest lists no {table.name}")
                columns = codecs(table)
                batch: list[dict[str, Any]] = []
                count = 0
                try:
                    for data in reader.rows(table.name):
                        batch.append(decode_row(data, columns))
                        count += 1
                        if len(batch) >= RESTORE_BATCH:
                            await repository.insert(table, batch)
                            batch = []
                except (KeyError, ValueError, TypeError) as exc:
                    raise InvalidArchiveError(f"{table.name} holds an unreadable row ({exc!r})") from exc
                await repository.insert(table, batch)
                rows[table.name] = count
            await repository.reset_sequences(tables)
    return BackupSummary(source, revision, sorted(groups), rows)
