"""Operator commands for a deployment's state: ``backup``, ``restore`` and ``doctor``.

Like the other operator commands they work on the database REGISTRY_DATABASE_URL names, and import the
server's modules inside their handlers so that ``registry --help`` and the API commands stay fast.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from registry.cli.output import ExitCode, exit_code_for_status, fail, table
from registry.cli.server_commands import (
    DatabaseUnreachableError,
    check_connection,
    cli_actor,
    first_line,
    load_settings,
    masked_url,
    missing_sqlite_file,
    on_database,
    run_migrations,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from registry.settings import Settings

T = TypeVar("T")
OPTIONAL_GROUPS = ("exposures", "events", "usage")  # registry.operations.tables.OPTIONAL_GROUPS, without importing it


def on_engine(settings: Settings, work: Callable[[AsyncEngine], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` with an engine on the configured database; failures are one line and an exit code."""
    from sqlalchemy.exc import DBAPIError

    from registry.db.engine import create_engine
    from registry.lib.errors import RegistryError

    async def run() -> T:
        engine = create_engine(settings)
        try:
            await check_connection(engine, settings.database_url)
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except DatabaseUnreachableError as exc:
        fail(str(exc), ExitCode.UNAVAILABLE)
    except RegistryError as exc:
        fail(exc.detail, exit_code_for_status(exc.status_code))
    except DBAPIError as exc:
        fail(f"the database at {masked_url(settings.database_url)} failed: {first_line(exc)}", ExitCode.UNAVAILABLE)
    except OSError as exc:  # the archive could not be written or read (disk full, permissions)
        fail(f"cannot write or read the archive ({exc.filename or 'no file'}: {exc.strerror or exc})", ExitCode.ERROR)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--include",
    default="",
    help=f"Also archive these, comma-separated: {', '.join(OPTIONAL_GROUPS)} (exposures with units, outcome "
    "events, usage records).",
)
@click.option("--all", "include_all", is_flag=True, help="Archive everything (same as --include with every group).")
def backup(file: Path, include: str, include_all: bool) -> None:
    """Write one consistent archive of the registry's state to FILE (a .tar.gz; see README, Backup and restore)."""
    wanted = set(OPTIONAL_GROUPS) if include_all else {g.strip() for g in include.split(",") if g.strip()}
    unknown = wanted - set(OPTIONAL_GROUPS)
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(sorted(unknown))}; choose from {', '.join(OPTIONAL_GROUPS)}")
    if not file.parent.is_dir():
        fail(f"no folder {file.parent} to write {file.name} in", ExitCode.NOT_FOUND)
    settings = load_settings()
    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        fail(f"no database at {missing.resolve()} to back up", ExitCode.UNAVAILABLE)

    async def work(engine: AsyncEngine) -> Any:
        from registry.auth.audit import AuditLog
        from registry.db.engine import create_sessionmaker
        from registry.operations.backup import backup as write_backup
        from registry.operations.repository import BACKUP_ACTION

        summary = await write_backup(engine, file, include=frozenset(wanted))
        # Recorded in the database backed up, so that 'registry doctor' can tell when the last backup ran.
        async with create_sessionmaker(engine)() as session, session.begin():
            await AuditLog(session).record(
                cli_actor(),
                BACKUP_ACTION,
                "backup",
                file.name[:256],
                after={"groups": summary.groups, "revision": summary.revision, "rows": sum(summary.rows.values())},
            )
        return summary

    summary = on_engine(settings, work)
    click.echo(
        f"wrote {file} ({sum(summary.rows.values())} rows in {len(summary.rows)} tables; "
        f"{', '.join(summary.groups)}; schema {summary.revision})",
        err=True,
    )


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def restore(file: Path) -> None:
    """Load the archive FILE into the empty database REGISTRY_DATABASE_URL names (migrating it first).

    A database that holds any row is refused (exit 4); so is an archive of another schema revision (exit 6).
    """
    if not file.is_file():
        fail(f"no backup archive at {file}", ExitCode.NOT_FOUND)
    settings = load_settings()
    run_migrations(settings)

    async def work(engine: AsyncEngine) -> Any:
        from registry.operations.backup import restore as load_backup

        return await load_backup(engine, file)

    summary = on_engine(settings, work)
    click.echo(
        f"restored {file} ({sum(summary.rows.values())} rows in {len(summary.rows)} tables; schema {summary.revision})",
        err=True,
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Check this deployment against the production checklist: pass, warn or fail, and why.

    Exits 1 when any check fails. The same report: GET /v1/admin/doctor (admin scope).
    """
    settings = load_settings()

    async def work(session: AsyncSession) -> list[Any]:
        from registry.lib.redis import create_redis
        from registry.operations.doctor_service import DoctorService

        redis = create_redis(settings)
        try:
            return await DoctorService(session, settings, redis).run()
        finally:
            if redis is not None:
                await redis.aclose()

    checks = on_database(settings, work)
    statuses = {c.status for c in checks}
    worst = "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
    if as_json:
        payload = {
            "status": worst,
            "checks": [{"name": c.name, "status": c.status, "reason": c.reason} for c in checks],
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        table(
            [{"status": c.status, "check": c.name, "reason": c.reason} for c in checks], ["status", "check", "reason"]
        )
        click.echo(f"\n{worst}")
    if worst == "fail":
        raise SystemExit(int(ExitCode.ERROR))


COMMANDS: list[click.Command] = [backup, restore, doctor]
