"""Errors of backup and restore, each carrying its status (and so the command's exit code)."""

from __future__ import annotations

from registry.lib.errors import ConflictError, InvalidInputError, NotFoundError


class ArchiveNotFoundError(NotFoundError):
    type = "backup_not_found"
    title = "No such backup archive"


class InvalidArchiveError(InvalidInputError):
    """Not a registry backup, or a member that does not match its manifest (truncated, altered)."""

    type = "invalid_backup"
    title = "Invalid backup archive"


class SchemaMismatchError(InvalidInputError):
    """The archive was written by another schema revision than this release's."""

    type = "backup_schema_mismatch"
    title = "Backup of another schema revision"


class DatabaseNotEmptyError(ConflictError):
    """A restore only loads into an empty database, so nothing is merged or overwritten."""

    type = "database_not_empty"
    title = "Database not empty"


class BackupTargetError(ConflictError):
    """A backup writes over an earlier backup archive only: the file named holds something else (the database)."""

    type = "backup_target_taken"
    title = "Backup target holds something else"
