"""A real `registry serve` process on a fresh PostgreSQL database, for attacks that need real sockets."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from registry.settings import Settings
from tests.conftest import REDIS_URL, create_database, drop_database, make_key_on
from tests.test_cli import Server, free_port


@dataclass
class LiveServer:
    server: Server
    settings: Settings
    admin_key: str
    env: dict[str, str]
    log_dir: Path

    @property
    def url(self) -> str:
        return self.server.url


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(
        REGISTRY_DATABASE_URL=database_url,
        REGISTRY_REDIS_URL=REDIS_URL,
        REGISTRY_REDIS_KEY_PREFIX=f"test-live-{uuid.uuid4().hex[:8]}:",
        REGISTRY_PORT=str(free_port()),
        REGISTRY_BOOTSTRAP_ADMIN_KEY="false",
        **extra,
    )
    return env


async def delete_redis_keys(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    async for key in redis.scan_iter(match=f"{prefix}*"):
        await redis.delete(key)
    await redis.aclose()


@pytest.fixture
def live_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A granian server on its own database; ``@pytest.mark.parametrize('live_server', [{...}], indirect=True)``
    passes extra ``REGISTRY_*`` variables."""
    extra: dict[str, str] = getattr(request, "param", {})
    name = f"registry_live_{uuid.uuid4().hex[:10]}"
    database_url = asyncio.run(create_database(name))
    env = server_env(database_url, **extra)
    log_dir = tmp_path_factory.mktemp("server")
    server: Server | None = None
    # The logs are closed and the database dropped even if the server never became healthy.
    with (log_dir / "stdout.log").open("w") as stdout, (log_dir / "stderr.log").open("w") as stderr:
        try:
            server = Server(env, int(env["REGISTRY_PORT"]), stdout=stdout, stderr=stderr)
            settings = Settings(database_url=database_url)
            headers = asyncio.run(make_key_on(settings))
            yield LiveServer(server, settings, headers["Authorization"].removeprefix("Bearer "), env, log_dir)
        finally:
            if server is not None and server.process.poll() is None:
                server.stop()
            asyncio.run(drop_database(name))
            asyncio.run(delete_redis_keys(env["REGISTRY_REDIS_KEY_PREFIX"]))
