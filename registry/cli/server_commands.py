"""Operator commands: ``serve``, ``worker``, ``migrate`` and ``keys``, which work on the database directly.

The server's modules (SQLAlchemy, Litestar, SciPy...) are imported inside each command, so that
the API commands, which never need them, start quickly.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from registry import __version__
from registry.auth.keys import Scope
from registry.cli.output import ExitCode, exit_code_for_status, fail, table

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from registry.auth.principal import Actor
    from registry.settings import Settings

T = TypeVar("T")
SCOPES = [s.value for s in Scope]


class DatabaseUnreachableError(Exception):
    """The database named by REGISTRY_DATABASE_URL could not be opened; the message says which and why."""


def masked_url(url: str) -> str:
    """The database URL with its password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unreadable URL has no password we could find either
        return url


def first_line(exc: BaseException) -> str:
    """The driver's own message (SQLAlchemy wraps it in ``orig``), first line only; else the error's name."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else repr(exc)


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist (opening it would create an empty database)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    return None if path.exists() else path


def cli_actor() -> Actor:
    from registry.auth.principal import Actor

    user = os.environ.get("USER") or "operator"
    return Actor(name=f"cli:{user}")


async def with_session(settings: Settings, work: Callable[[AsyncSession], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` in one transaction; its changes reach running servers as the API's do.

    That is through Redis when it is configured, else through the database's change log
    (``registry.db.change_log``), which servers without Redis read every second.
    """
    from registry.db.engine import create_engine, create_sessionmaker
    from registry.db.session import unit_of_work
    from registry.lib.changes import ChangeBus
    from registry.lib.redis import create_redis

    engine = create_engine(settings)
    redis = None
    try:
        await check_connection(engine, settings.database_url)
        redis = create_redis(settings)
        async with unit_of_work(
            create_sessionmaker(engine), ChangeBus(redis, f"{settings.redis_key_prefix}changes")
        ) as session:
            return await work(session)
    finally:
        if redis is not None:
            await redis.aclose()
        await engine.dispose()


async def check_connection(engine: Any, url: str) -> None:
    """Open one connection, so that a database that is down says so before any work starts."""
    from sqlalchemy.exc import DBAPIError

    try:
        async with engine.connect():
            pass
    except (OSError, TimeoutError, DBAPIError) as exc:
        raise DatabaseUnreachableError(f"cannot open the database at {masked_url(url)}: {first_line(exc)}") from exc


def on_database(settings: Settings, work: Callable[[AsyncSession], Coroutine[Any, Any, T]]) -> T:
    """``with_session`` for a command: an existing database, and one line and an exit code when it fails.

    A SQLite file that does not exist is not created here (only ``serve`` and ``migrate`` do that).
    """
    from sqlalchemy.exc import DBAPIError

    from registry.lib.errors import RegistryError

    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        fail(
            f"no database at {missing.resolve()} (REGISTRY_DATABASE_URL={masked_url(settings.database_url)}): "
            "create it with 'registry migrate' or 'registry serve', or set REGISTRY_DATABASE_URL",
            ExitCode.UNAVAILABLE,
        )
    try:
        return asyncio.run(with_session(settings, work))
    except DatabaseUnreachableError as exc:
        fail(str(exc), ExitCode.UNAVAILABLE)
    except RegistryError as exc:
        fail(exc.detail, exit_code_for_status(exc.status_code))
    except DBAPIError as exc:  # it opened, but the tables are not there (or not as this release needs)
        fail(
            f"the database at {masked_url(settings.database_url)} is not ready ({first_line(exc)}): "
            "run 'registry migrate'",
            ExitCode.UNAVAILABLE,
        )


def load_settings(*, warn_unknown: bool = True) -> Settings:
    """The settings from REGISTRY_* variables; a wrong value is one line and the usage exit code.

    A ``REGISTRY_*`` variable that is no setting is warned about (a typo would otherwise leave a default in force).
    """
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from registry.settings import Settings, unknown_variables

    if warn_unknown:
        for line in unknown_variables(os.environ):
            click.echo(f"warning: {line}", err=True)
    try:
        return Settings()
    except ValidationError as exc:
        # A validator's own message, without pydantic's "Value error, " before it.
        problems = "; ".join(_setting_problem(e["loc"], e["msg"].removeprefix("Value error, ")) for e in exc.errors())
        fail(f"invalid settings: {problems}", ExitCode.USAGE)
    except SettingsError as exc:  # a JSON setting (REGISTRY_BACKENDS...) that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        cause = f"not JSON ({exc.__cause__})" if exc.__cause__ is not None else str(exc)
        fail(f"invalid settings: {_setting_problem((field[1],) if field else (), cause)}", ExitCode.USAGE)


def _setting_problem(location: tuple[int | str, ...], message: str) -> str:
    """The variable and, for a JSON setting (REGISTRY_BACKENDS), the path of the bad value inside it."""
    variable = f"REGISTRY_{str(location[0]).upper()}" if location else "settings"
    inside = ".".join(map(str, location[1:]))
    return f"{variable}{f' ({inside})' if inside else ''}: {message}"


async def migrate_database(settings: Settings, revision: str = "head") -> str | None:
    """Upgrade to ``revision``; the revision the database is at then."""
    from registry.db import migrate as migrations
    from registry.db.engine import create_engine

    engine = create_engine(settings)
    try:
        return await migrations.upgrade(engine, revision)
    finally:
        await engine.dispose()


def print_bootstrap_key(secret: str | None) -> None:
    if secret:
        click.echo(
            "\nNo API keys existed, so an admin key was created. It is shown only now; keep it:\n\n"
            f"    {secret}\n\n"
            f"    export REGISTRY_API_KEY={secret}\n",
            err=True,
        )


async def bootstrap_admin_key_for(settings: Settings) -> str | None:
    """Create an admin key when the database has no keys at all (first start)."""
    from registry.auth.principal import Actor
    from registry.auth.service import ApiKeyService

    async def work(session: AsyncSession) -> str | None:
        service = ApiKeyService(session)
        if await service.any_keys():
            return None
        _, secret = await service.create_key("admin", [Scope.ADMIN], Actor(name="bootstrap"))
        return secret

    return await with_session(settings, work)


def run_migrations(settings: Settings, revision: str = "head") -> str | None:
    """Migrate (creating a SQLite file if need be); a database that is down is one line, not a traceback.

    Returns the revision the database is at then.
    """
    from alembic.util import CommandError
    from sqlalchemy.exc import DBAPIError

    try:
        return asyncio.run(migrate_database(settings, revision))
    except (OSError, TimeoutError, DBAPIError) as exc:
        fail(
            f"cannot migrate the database at {masked_url(settings.database_url)}: {first_line(exc)}",
            ExitCode.UNAVAILABLE,
        )
    except CommandError as exc:  # an unknown revision
        fail(f"cannot migrate to {revision}: {first_line(exc)}", ExitCode.USAGE)


# --------------------------------------------------------------------------- serve, worker, migrate


@click.command()
@click.option("--host", help="Address to bind (REGISTRY_HOST).")
@click.option("--port", type=int, help="Port (REGISTRY_PORT).")
@click.option("--workers", type=int, help="Worker processes (REGISTRY_WORKERS).")
@click.option("--server", type=click.Choice(["granian", "uvicorn"]), help="ASGI server (REGISTRY_SERVER).")
@click.option("--migrate/--no-migrate", default=True, show_default=True, help="Apply migrations first.")
def serve(host: str | None, port: int | None, workers: int | None, server: str | None, migrate: bool) -> None:
    """Serve the API (migrating the database first, and creating an admin key on a first start)."""
    overrides = {"host": host, "port": port, "workers": workers, "server": server}
    # Workers are separate processes that read settings from the environment.
    os.environ.update({f"REGISTRY_{k.upper()}": str(v) for k, v in overrides.items() if v is not None})
    settings = load_settings()
    # Before migrating: taken, granian ends in a page of Rust backtrace and uvicorn with status 3 ("not found").
    if (reason := cannot_listen(settings.host, settings.port)) is not None:
        fail(
            f"cannot listen on {settings.host}:{settings.port}: {reason} (REGISTRY_HOST, REGISTRY_PORT)", ExitCode.ERROR
        )
    if migrate:
        run_migrations(settings)
    if settings.bootstrap_admin_key:
        print_bootstrap_key(asyncio.run(bootstrap_admin_key_for(settings)))
    click.echo(f"prompt-registry {__version__} on http://{settings.host}:{settings.port} ({settings.server})", err=True)
    with process_group_metrics_dir(settings):
        run_server(load_settings(warn_unknown=False))  # warned above


def cannot_listen(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now (the port is taken, the address is not this host's)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


@contextmanager
def process_group_metrics_dir(settings: Settings) -> Iterator[None]:
    """With several workers, a fresh folder where each publishes its metrics (see ProcessGroupMetrics)."""
    if settings.workers < 2 or settings.metrics_dir:
        yield
        return
    directory = tempfile.mkdtemp(prefix="registry-metrics-")
    os.environ["REGISTRY_METRICS_DIR"] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@click.command()
def worker() -> None:
    """Run the shared background work (statistics, webhook deliveries, retention) without serving the API.

    Deployments with several API replicas (REGISTRY_ROLE=api) run one or more of these; they
    coordinate through the database, so running two is safe. /health, /ready and /metrics are
    served on REGISTRY_WORKER_PORT. Stops on SIGTERM or Ctrl-C.
    """
    from registry.lib.logging import configure_logging
    from registry.system.probes import ProbePortError

    os.environ["REGISTRY_ROLE"] = "worker"
    settings = load_settings()
    configure_logging(settings)
    try:
        asyncio.run(run_worker(settings))
    except ProbePortError as exc:
        fail(f"{exc} (REGISTRY_HOST, REGISTRY_WORKER_PORT)", ExitCode.ERROR)


async def run_worker(settings: Settings) -> None:
    from registry.runtime import Runtime
    from registry.system.probes import ProbeListener

    runtime = Runtime.build(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    await runtime.start()
    probes = ProbeListener(runtime, settings.host, settings.worker_port)
    try:
        await probes.start()
        click.echo(
            f"prompt-registry {__version__} worker: {', '.join(job.name for job in runtime.jobs)}; "
            f"probes on http://{settings.host}:{settings.worker_port}",
            err=True,
        )
        await stopping.wait()
    finally:
        await probes.stop()
        await runtime.stop()


def run_server(settings: Settings, target: str = "registry.app:create_app") -> None:
    """Serve the app factory ``target`` as ``serve`` does (the benchmarks pass their own, with bare routes).

    Both servers close idle and slow connections and cap them per worker (``registry.lib.server``).
    """
    from registry.lib.logging import granian_log_config
    from registry.lib.server import connection_limit, raise_open_file_limit

    max_connections = connection_limit(settings.max_connections_per_worker, raise_open_file_limit())
    if settings.server == "granian":
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.log import LogLevels

        from registry.granian_master import RegistryGranian

        RegistryGranian(
            # Its workers start with the server's signal handlers: the app's own factory would lose a stop.
            "registry.granian_worker:create_app" if target == "registry.app:create_app" else target,
            factory=True,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            workers=settings.workers,
            log_access=False,
            log_level=LogLevels(settings.log_level.lower()),
            log_dictconfig=granian_log_config(settings),
            # HTTP/1 only: the automatic mode waits for a connection's first bytes without a deadline.
            http=HTTPModes.http1,
            backpressure=max_connections,
            http1_settings=HTTP1Settings(header_read_timeout=round(settings.header_read_timeout_seconds * 1000)),
        ).serve()
    else:
        import uvicorn

        uvicorn.run(
            target,
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            access_log=False,
            log_level="warning",
            http="registry.lib.server:GuardedHttpToolsProtocol",
            timeout_keep_alive=max(1, round(settings.header_read_timeout_seconds)),
        )


@click.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.option("--bootstrap-admin-key", is_flag=True, help="Then create and print an admin key if none exists.")
def migrate(revision: str, bootstrap_admin_key: bool) -> None:
    """Apply database migrations (a deployment runs this once, before the replicas start)."""
    settings = load_settings()
    reached = run_migrations(settings, revision)
    # Said as it is: an upgrade never goes down, so a database past an older --revision stays where it was.
    click.echo(f"database at {reached}", err=True)
    if bootstrap_admin_key:
        print_bootstrap_key(asyncio.run(bootstrap_admin_key_for(settings)))


# --------------------------------------------------------------------------- keys


@click.group()
def keys() -> None:
    """API keys: create, list, revoke (directly in the database that REGISTRY_DATABASE_URL names)."""


@keys.command("create")
@click.option("--name", required=True, help="Who uses the key, e.g. checkout-app.")
@click.option(
    "--scopes",
    required=True,
    help=f"Comma-separated, from: {', '.join(SCOPES)} (admin implies all).",
)
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Expire the key after this many days.")
@click.option(
    "--rate-limit",
    type=click.IntRange(min=0),
    help="Requests per minute (0: unlimited; default: REGISTRY_RATE_LIMIT_PER_MINUTE).",
)
def keys_create(name: str, scopes: str, expires_in_days: int | None, rate_limit: int | None) -> None:
    """Create a key and print its secret (shown only once)."""
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise click.BadParameter(f"unknown scope(s) {', '.join(unknown) or '(none given)'}; use {', '.join(SCOPES)}")
    from registry.auth.schemas import MAX_REQUESTS_PER_MINUTE

    if rate_limit is not None and rate_limit > MAX_REQUESTS_PER_MINUTE:
        raise click.BadParameter(f"at most {MAX_REQUESTS_PER_MINUTE}", param_hint="--rate-limit")

    async def work(session: AsyncSession) -> tuple[str, str]:
        from registry.auth.service import ApiKeyService
        from registry.db.base import utcnow

        expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        key, secret = await ApiKeyService(session).create_key(
            name, [Scope(s) for s in wanted], cli_actor(), expires_at=expires_at, rate_limit_per_minute=rate_limit
        )
        return key.public_id, secret

    public_id, secret = on_database(load_settings(), work)
    click.echo(f"created key {public_id} ({name}: {', '.join(wanted)}); the secret is shown only now:", err=True)
    click.echo(secret)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
def keys_list(include_revoked: bool) -> None:
    """List keys (never their secrets)."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        from registry.auth.service import ApiKeyService
        from registry.lib.pagination import PageRequest

        rows = await ApiKeyService(session).list_keys(
            PageRequest(limit=10_000, after=None), include_revoked=include_revoked
        )
        return [
            {
                "id": k.public_id,
                "name": k.name,
                "scopes": sorted(k.scopes),
                "created": k.created_at.strftime("%Y-%m-%d %H:%M"),
                "last used": k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else None,
                "revoked": k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else None,
            }
            for k in rows
        ]

    table(on_database(load_settings(), work), ["id", "name", "scopes", "created", "last used", "revoked"])


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after 'prk_')."""

    async def work(session: AsyncSession) -> None:
        from registry.auth.service import ApiKeyService

        await ApiKeyService(session).revoke_key(key_id, cli_actor())

    on_database(load_settings(), work)
    click.echo(f"revoked {key_id}")


COMMANDS: list[click.Command] = [serve, worker, migrate, keys]
