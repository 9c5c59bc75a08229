"""The ``registry`` command.

Operator commands (``serve``, ``migrate``, ``keys``) work on the database
directly. Product commands (``prompts``, ``versions``, ``promote``,
``rollback``, ``history``, ``diff``, ``experiments``) go through the REST API with an API key,
so they work against any deployment and are checked and audited like any
other caller.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from functools import wraps
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from prompt_registry_client import RegistryClient, RegistryError
from sqlalchemy.ext.asyncio import AsyncSession

from registry import __version__
from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.auth.schemas import MAX_REQUESTS_PER_MINUTE
from registry.auth.service import ApiKeyService
from registry.db import migrate as migrations
from registry.db.base import utcnow
from registry.db.engine import create_engine, create_sessionmaker
from registry.db.session import unit_of_work
from registry.lib.changes import ChangeBus
from registry.lib.logging import configure_logging
from registry.lib.redis import create_redis
from registry.lib.server import connection_limit, raise_open_file_limit
from registry.promptfiles.sync import run_export, run_sync
from registry.runtime import Runtime
from registry.settings import Settings
from registry.system.probes import ProbeListener

T = TypeVar("T")
Resource = Literal["prompts", "configs"]
SCOPES = [s.value for s in Scope]


def cli_actor() -> Actor:
    user = os.environ.get("USER") or "operator"
    return Actor(name=f"cli:{user}")


async def with_session(settings: Settings, work: Callable[[AsyncSession], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` in one transaction; its changes reach running servers as the API's do.

    That is through Redis when it is configured, else through the database's change log
    (``registry.db.change_log``), which servers without Redis read every second.
    """
    engine = create_engine(settings)
    redis = create_redis(settings)
    try:
        async with unit_of_work(
            create_sessionmaker(engine), ChangeBus(redis, f"{settings.redis_key_prefix}changes")
        ) as session:
            return await work(session)
    finally:
        if redis is not None:
            await redis.aclose()
        await engine.dispose()


async def migrate_database(settings: Settings, revision: str = "head") -> None:
    engine = create_engine(settings)
    try:
        await migrations.upgrade(engine, revision)
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

    async def work(session: AsyncSession) -> str | None:
        service = ApiKeyService(session)
        if await service.any_keys():
            return None
        _, secret = await service.create_key("admin", [Scope.ADMIN], Actor(name="bootstrap"))
        return secret

    return await with_session(settings, work)


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    rows = list(rows)
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row_cells in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row_cells, widths, strict=True)).rstrip())
    if not rows:
        click.echo("(none)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prompt-registry")
def main() -> None:
    """prompt-registry: serve the API, migrate, manage API keys, and work with prompts."""


# --------------------------------------------------------------------------- operators


@main.command()
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
    settings = Settings()
    if migrate:
        asyncio.run(migrate_database(settings))
    if settings.bootstrap_admin_key:
        print_bootstrap_key(asyncio.run(bootstrap_admin_key_for(settings)))
    click.echo(f"prompt-registry {__version__} on http://{settings.host}:{settings.port} ({settings.server})", err=True)
    with process_group_metrics_dir(settings):
        run_server(Settings())


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


@main.command()
def worker() -> None:
    """Run the shared background work (statistics, webhook deliveries, retention) without serving the API.

    Deployments with several API replicas (REGISTRY_ROLE=api) run one or more of these; they
    coordinate through the database, so running two is safe. /health, /ready and /metrics are
    served on REGISTRY_WORKER_PORT. Stops on SIGTERM or Ctrl-C.
    """
    os.environ["REGISTRY_ROLE"] = "worker"
    settings = Settings()
    configure_logging(settings)
    asyncio.run(run_worker(settings))


async def run_worker(settings: Settings) -> None:
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
    max_connections = connection_limit(settings.max_connections_per_worker, raise_open_file_limit())
    if settings.server == "granian":
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings

        Granian(
            target,
            factory=True,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGI,
            workers=settings.workers,
            log_access=False,
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


@main.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.option("--bootstrap-admin-key", is_flag=True, help="Then create and print an admin key if none exists.")
def migrate(revision: str, bootstrap_admin_key: bool) -> None:
    """Apply database migrations (a deployment runs this once, before the replicas start)."""
    settings = Settings()
    asyncio.run(migrate_database(settings, revision))
    click.echo(f"database at {revision}", err=True)
    if bootstrap_admin_key:
        print_bootstrap_key(asyncio.run(bootstrap_admin_key_for(settings)))


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (directly in the database)."""


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
    type=click.IntRange(min=0, max=MAX_REQUESTS_PER_MINUTE),
    help="Requests per minute (0: unlimited; default: REGISTRY_RATE_LIMIT_PER_MINUTE).",
)
def keys_create(name: str, scopes: str, expires_in_days: int | None, rate_limit: int | None) -> None:
    """Create a key and print its secret (shown only once)."""
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise click.BadParameter(f"unknown scope(s) {', '.join(unknown) or '(none given)'}; use {', '.join(SCOPES)}")
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None

    async def work(session: AsyncSession) -> tuple[str, str]:
        key, secret = await ApiKeyService(session).create_key(
            name, [Scope(s) for s in wanted], cli_actor(), expires_at=expires_at, rate_limit_per_minute=rate_limit
        )
        return key.public_id, secret

    public_id, secret = asyncio.run(with_session(Settings(), work))
    click.echo(f"created key {public_id} ({name}: {', '.join(wanted)}); the secret is shown only now:", err=True)
    click.echo(secret)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
def keys_list(include_revoked: bool) -> None:
    """List keys (never their secrets)."""
    from registry.lib.pagination import PageRequest

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        rows = await ApiKeyService(session).list_keys(
            PageRequest(limit=10_000, after=None), include_revoked=include_revoked
        )
        return [
            {
                "id": k.public_id,
                "name": k.name,
                "scopes": ",".join(k.scopes),
                "created": k.created_at.strftime("%Y-%m-%d %H:%M"),
                "last used": k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else None,
                "revoked": k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else None,
            }
            for k in rows
        ]

    table(asyncio.run(with_session(Settings(), work)), ["id", "name", "scopes", "created", "last used", "revoked"])


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (the part after 'prk_')."""

    async def work(session: AsyncSession) -> None:
        await ApiKeyService(session).revoke_key(key_id, cli_actor())

    try:
        asyncio.run(with_session(Settings(), work))
    except Exception as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"revoked {key_id}")


# --------------------------------------------------------------------------- product commands


NO_API_KEY = (
    "no API key: set REGISTRY_API_KEY (or pass --api-key); "
    "an admin creates one with 'registry keys create --name NAME --scopes read'"
)


def api_command(func: Callable[..., None]) -> Callable[..., None]:
    """Add --url/--api-key/--json, open a client, and print API errors readably."""

    @click.option(
        "--url", envvar="REGISTRY_URL", default="http://127.0.0.1:8000", show_default=True, help="Service URL."
    )
    @click.option("--api-key", envvar="REGISTRY_API_KEY", help="API key (REGISTRY_API_KEY).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @wraps(func)
    def wrapper(url: str, api_key: str | None, as_json: bool, **kwargs: Any) -> None:
        with RegistryClient(url, api_key) as client:
            try:
                func(client, as_json, **kwargs)
            except RegistryError as exc:
                if exc.status == 401 and not api_key:
                    raise click.ClickException(NO_API_KEY) from exc
                click.echo(f"error: {exc.detail}", err=True)
                for error in exc.errors:
                    click.echo(f"  {error.get('field')}: {error.get('message')}", err=True)
                sys.exit(1)

    return wrapper


def resource_of(config: bool) -> Resource:
    return "configs" if config else "prompts"


config_flag = click.option("--config", is_flag=True, help="NAME is a model config, not a prompt.")


def emit(as_json: bool, payload: Any, render: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        render()


@main.group()
def prompts() -> None:
    """Prompts (through the API)."""


@prompts.command("list")
@click.option("--prefix", help="Only names starting with this, e.g. a folder 'support/'.")
@click.option("--tag", help="Only prompts with this tag.")
@config_flag
@api_command
def prompts_list(client: RegistryClient, as_json: bool, prefix: str | None, tag: str | None, config: bool) -> None:
    """List prompts (or configs with --config)."""
    rows = list(client.list_resources(resource_of(config), prefix=prefix, tag=tag))
    emit(as_json, rows, lambda: table(rows, ["name", "latest_version", "tags", "updated_at", "updated_by"]))


@main.group()
def versions() -> None:
    """Versions of a prompt or config (through the API)."""


@versions.command("list")
@click.argument("name")
@click.option("--state", type=click.Choice(["draft", "staging", "production", "archived"]))
@config_flag
@api_command
def versions_list(client: RegistryClient, as_json: bool, name: str, state: str | None, config: bool) -> None:
    """List versions of NAME, newest first."""
    rows = list(client.list_versions(name, resource_of(config), state=state))
    emit(as_json, rows, lambda: table(rows, ["version", "state", "author", "created_at", "commit_message"]))


@main.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@click.option("--to", "to", required=True, type=click.Choice(["staging", "production", "archived"]))
@click.option("--expected-current", type=int, help="Version you believe holds the state now (default: read it).")
@click.option("--reason", help="Why, for the history.")
@config_flag
@api_command
def promote(
    client: RegistryClient,
    as_json: bool,
    name: str,
    version: int,
    to: str,
    expected_current: int | None,
    reason: str | None,
    config: bool,
) -> None:
    """Move VERSION of NAME to staging, production or archived."""
    kwargs: dict[str, Any] = {"reason": reason}
    if expected_current is not None:
        kwargs["expected_current"] = expected_current
    result = client.promote(name, version, to, resource_of(config), **kwargs)
    emit(as_json, result, lambda: _print_changes(result))


@main.command()
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1), required=False)
@click.option("--reason", required=True, help="Why you roll back (kept in the history).")
@config_flag
@api_command
def rollback(client: RegistryClient, as_json: bool, name: str, version: int | None, reason: str, config: bool) -> None:
    """Put an earlier production VERSION of NAME back (default: the previous one)."""
    result = client.rollback(name, reason, version, resource_of(config))
    emit(as_json, result, lambda: _print_changes(result))


def _print_changes(result: dict[str, Any]) -> None:
    if not result["changed"]:
        click.echo(f"{result['name']} v{result['version']} is already {result['state']}; nothing changed")
    for change in result["changes"]:
        moved = f"{change['from_state']} -> {change['to_state']}"
        click.echo(f"{result['name']} v{change['version']}: {moved} ({change['action']})")


@main.command()
@click.argument("name")
@config_flag
@api_command
def history(client: RegistryClient, as_json: bool, name: str, config: bool) -> None:
    """State transitions of NAME, newest first."""
    rows = list(client.history(name, resource_of(config)))
    emit(
        as_json,
        rows,
        lambda: table(rows, ["created_at", "version", "from_state", "to_state", "action", "actor", "reason"]),
    )


@main.command()
@click.argument("name")
@click.argument("from_version", type=click.IntRange(min=1))
@click.argument("to_version", type=click.IntRange(min=1))
@config_flag
@api_command
def diff(client: RegistryClient, as_json: bool, name: str, from_version: int, to_version: int, config: bool) -> None:
    """Differences between two versions of NAME."""
    result = client.diff(name, from_version, to_version, resource_of(config))

    def render() -> None:
        if result.get("content_diff"):
            click.echo(result["content_diff"], nl=False)
        for label, key in (
            ("input schema", "input_schema_changes"),
            ("config", "config_changes"),
            ("config", "changes"),
        ):
            for change in result.get(key) or []:
                click.echo(f"{label}: {change['field']}: {change['before']!r} -> {change['after']!r}")
        if not any(result.get(k) for k in ("content_diff", "input_schema_changes", "config_changes", "changes")):
            click.echo("no differences")

    emit(as_json, result, render)


# --------------------------------------------------------------------------- prompts as code


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change, as a diff, and change nothing.")
@click.option(
    "--promote",
    "promote_to",
    type=click.Choice(["staging", "production"]),
    help="Then move each prompt's newest version to this state.",
)
@click.option("--message", default="registry sync", show_default=True, help="Commit message of new versions.")
@api_command
def sync(
    client: RegistryClient, as_json: bool, folder: Path, dry_run: bool, promote_to: str | None, message: str
) -> None:
    """Push the prompt files in FOLDER: a new version where a prompt changed, nothing where it did not."""
    echo, echo_error = click.echo, lambda line: click.echo(line, err=True)
    if not run_sync(
        client,
        folder,
        dry_run=dry_run,
        promote_to=promote_to,
        message=message,
        echo=echo,
        echo_error=echo_error,
        as_json=as_json,
    ):
        sys.exit(1)


@main.command("export")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prefix", help="Only prompts whose names start with this, e.g. a folder 'support/'.")
@api_command
def export_prompts(client: RegistryClient, as_json: bool, folder: Path, prefix: str | None) -> None:
    """Write each prompt's newest version to FOLDER as prompt files (what `registry sync` reads)."""
    run_export(client, folder, prefix=prefix, echo=click.echo, as_json=as_json)


# --------------------------------------------------------------------------- experiments


@main.group()
def experiments() -> None:
    """A/B experiments on prompts (through the API)."""


def parse_variant(spec: str) -> dict[str, Any]:
    """``KEY=VERSION``, optionally ``:WEIGHT`` and ``@CONFIG:VERSION``, e.g. ``treatment=2:1@fast:3``."""
    key, equals, rest = spec.partition("=")
    if not equals or not key:
        raise click.BadParameter(f"'{spec}' is not KEY=VERSION[:WEIGHT][@CONFIG:VERSION]")
    rest, at, config = rest.partition("@")
    version, colon, weight = rest.partition(":")
    variant: dict[str, Any] = {"key": key}
    try:
        variant["prompt_version"] = int(version)
        if colon:
            variant["weight"] = float(weight)
        if at:
            name, _, config_version = config.rpartition(":")
            variant["config"] = {"name": name, "version": int(config_version)}
    except ValueError as exc:
        raise click.BadParameter(f"'{spec}' is not KEY=VERSION[:WEIGHT][@CONFIG:VERSION]") from exc
    return variant


def parse_namespace(spec: str) -> dict[str, Any]:
    """``NAME:START-END``, e.g. ``checkout:0-0.5``."""
    name, _, bounds = spec.partition(":")
    start, _, end = bounds.partition("-")
    try:
        return {"name": name, "start": float(start), "end": float(end)}
    except ValueError as exc:
        raise click.BadParameter(f"'{spec}' is not NAME:START-END") from exc


@experiments.command("create")
@click.argument("key")
@click.option("--prompt", required=True, help="The prompt the experiment routes.")
@click.option(
    "--variant",
    "variants",
    multiple=True,
    required=True,
    help="KEY=VERSION[:WEIGHT][@CONFIG:VERSION]; the first is the control. Repeat for each variant.",
)
@click.option("--primary-metric", help="The metric that decides.")
@click.option("--guardrail", "guardrails", multiple=True, help="A metric that must not get worse (repeatable).")
@click.option("--coverage", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="Share of units in.")
@click.option("--seed", help="Hash seed (default: the key).")
@click.option("--namespace", help="NAME:START-END; experiments of a namespace never share a unit.")
@click.option("--correction", type=click.Choice(["holm", "benjamini-hochberg", "none"]), default="holm")
@click.option("--sequential", is_flag=True, help="Always-valid intervals, to look at results any time.")
@click.option("--cuped", is_flag=True, help="Reduce variance with each unit's pre-exposure value.")
@click.option("--description", default="", help="What the experiment tests.")
@api_command
def experiments_create(
    client: RegistryClient,
    as_json: bool,
    key: str,
    prompt: str,
    variants: tuple[str, ...],
    primary_metric: str | None,
    guardrails: tuple[str, ...],
    coverage: float,
    seed: str | None,
    namespace: str | None,
    correction: str,
    sequential: bool,
    cuped: bool,
    description: str,
) -> None:
    """Create experiment KEY as a draft."""
    definition: dict[str, Any] = {
        "key": key,
        "prompt": prompt,
        "variants": [parse_variant(v) for v in variants],
        "guardrail_metrics": list(guardrails),
        "coverage": coverage,
        "correction": correction,
        "sequential": sequential,
        "cuped": cuped,
        "description": description,
    }
    if primary_metric:
        definition["primary_metric"] = primary_metric
    if seed:
        definition["hash_seed"] = seed
    if namespace:
        definition["namespace"] = parse_namespace(namespace)
    result = client.create_experiment(definition)
    emit(as_json, result, lambda: _print_experiment(result))


@experiments.command("list")
@click.option("--status", type=click.Choice(["draft", "running", "stopped"]))
@click.option("--prompt", help="Only experiments on this prompt.")
@api_command
def experiments_list(client: RegistryClient, as_json: bool, status: str | None, prompt: str | None) -> None:
    """List experiments."""
    rows = list(client.list_experiments(status=status, prompt=prompt))
    emit(as_json, rows, lambda: table(rows, ["key", "prompt", "status", "phase", "primary_metric", "started_at"]))


@experiments.command("start")
@click.argument("key")
@api_command
def experiments_start(client: RegistryClient, as_json: bool, key: str) -> None:
    """Start routing units into experiment KEY."""
    result = client.start_experiment(key)
    emit(as_json, result, lambda: _print_experiment(result))


@experiments.command("stop")
@click.argument("key")
@click.option("--winner", help="The winning variant: its version becomes production.")
@click.option("--reason", help="Why, for the history.")
@api_command
def experiments_stop(client: RegistryClient, as_json: bool, key: str, winner: str | None, reason: str | None) -> None:
    """Stop experiment KEY, optionally promoting the winner's version."""
    result = client.stop_experiment(key, winner=winner, reason=reason)

    def render() -> None:
        _print_experiment(result["experiment"])
        promoted = result.get("promoted")
        if promoted:
            made = " (a new version carrying the winning config)" if promoted["created_version"] else ""
            click.echo(f"{promoted['prompt']} v{promoted['version']} is now in production{made}")

    emit(as_json, result, render)


@experiments.command("results")
@click.argument("key")
@click.option("--phase", type=click.IntRange(min=1), help="Phase (default: the current one).")
@api_command
def experiments_results(client: RegistryClient, as_json: bool, key: str, phase: int | None) -> None:
    """Results of experiment KEY, per metric and variant."""
    result = dict(client.experiment_results(key, phase=phase).raw)
    emit(as_json, result, lambda: _print_results(result))


def _print_experiment(experiment: dict[str, Any]) -> None:
    click.echo(
        f"{experiment['key']} on {experiment['prompt']}: {experiment['status']}, phase {experiment['phase']}, "
        f"coverage {experiment['coverage']:g}"
    )
    table(
        [
            {
                "variant": v["key"],
                "version": v["prompt_version"],
                "weight": f"{v['weight']:.3f}",
                "config": f"{v['config']['name']}@{v['config']['version']}" if v["config"] else None,
            }
            for v in experiment["variants"]
        ],
        ["variant", "version", "weight", "config"],
    )


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _interval(effect: dict[str, Any] | None, percent: bool = False) -> str:
    if effect is None:
        return ""
    scale, unit = (100, "%") if percent else (1, "")
    return f"{effect['estimate'] * scale:+.3g}{unit} [{effect['ci_low'] * scale:.3g}, {effect['ci_high'] * scale:.3g}]"


def _print_results(result: dict[str, Any]) -> None:
    srm = result["srm"]
    click.echo(
        f"{result['experiment']} phase {result['phase']} ({result['status']}): {result['units']} units, "
        f"{result['units_in_multiple_variants']} in several variants (excluded), {result['pending_units']} pending"
    )
    flag = "  SAMPLE RATIO MISMATCH: do not trust these results" if srm["flagged"] else ""
    click.echo(f"sample ratio p = {_number(srm['p_value'])}{flag}")
    table(
        [
            {
                "variant": v["variant"],
                "units": v["units"],
                "expected": f"{v['expected_share']:.1%}",
                "observed": f"{v['observed_share']:.1%}",
            }
            for v in result["variants"]
        ],
        ["variant", "units", "expected", "observed"],
    )
    for metric in result["metrics"]:
        better = "higher" if metric["direction"] == "higher" else "lower"
        click.echo(f"\n{metric['metric']} ({metric['role']}, {metric['kind']}, {better} is better)")
        rows = []
        for row in metric["variants"]:
            comparison = row["vs_control"] or {}
            rows.append(
                {
                    "variant": row["variant"],
                    "units": row["units"],
                    "mean": _number(row["mean"]),
                    "95% ci": f"[{_number(row['ci_low'])}, {_number(row['ci_high'])}]",
                    "abs diff [ci]": _interval(comparison.get("absolute")),
                    "rel diff [ci]": _interval(comparison.get("relative"), percent=True),
                    "p": _number(comparison.get("p_value"), 3),
                    "p adj": _number(comparison.get("p_value_adjusted"), 3),
                    "chance to win": f"{comparison['chance_to_beat_control']:.1%}" if comparison else "",
                    "sig": ("yes" if comparison.get("significant") else "no") if comparison else row.get("note") or "",
                }
            )
        table(
            rows,
            [
                "variant",
                "units",
                "mean",
                "95% ci",
                "abs diff [ci]",
                "rel diff [ci]",
                "p",
                "p adj",
                "chance to win",
                "sig",
            ],
        )
