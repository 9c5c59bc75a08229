"""Two real server processes on one PostgreSQL and one Redis: a change made through one is served by the other."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from registry.settings import Settings
from tests.conftest import free_port
from tests.test_cli import Server
from tests.waiting import eventually


@pytest.fixture
def replicas(settings: Settings, redis_prefix: str, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(
        REGISTRY_DATABASE_URL=settings.database_url,
        REGISTRY_REDIS_URL=settings.redis_url or "",
        REGISTRY_REDIS_KEY_PREFIX=redis_prefix,
        REGISTRY_ACCESS_LOG="false",
        REGISTRY_BOOTSTRAP_ADMIN_KEY="false",
        REGISTRY_CACHE_TTL_SECONDS="3600",  # longer than any test: a change seen elsewhere came through Redis
    )
    ports = free_port(), free_port()
    first = Server({**env, "REGISTRY_PORT": str(ports[0])}, ports[0])
    second = Server({**env, "REGISTRY_PORT": str(ports[1]), "REGISTRY_ROLE": "api"}, ports[1])
    try:
        yield first, second
    finally:
        for server in (first, second):
            if server.process.poll() is None:
                server.stop()


def rendered_version(http: httpx.Client, variables: dict[str, str]) -> int:
    response = http.post("/v1/prompts/greeting/render", json={"variables": variables})
    assert response.status_code == 200, response.text
    return int(response.json()["version"])


def serves(http: httpx.Client, version: int) -> Callable[[], bool]:
    return lambda: rendered_version(http, {"name": "x"}) == version


def test_promotions_and_rollbacks_reach_the_other_replica_through_the_change_bus(
    replicas: tuple[Server, Server], admin: dict[str, str]
) -> None:
    """The replicas cache for an hour, so only the change published through Redis can make the second one see it."""
    first, second = replicas
    with (
        httpx.Client(base_url=first.url, headers=admin) as one,
        httpx.Client(base_url=second.url, headers=admin) as two,
    ):
        assert one.post("/v1/prompts", json={"name": "greeting"}).status_code == 201
        for template in ("Hello {{ name }}", "Hi {{ name }}"):
            assert (
                one.post("/v1/prompts/greeting/versions", json={"kind": "text", "template": template}).status_code
                == 201
            )
        promoted = one.post(
            "/v1/prompts/greeting/versions/1/promote", json={"to": "production", "expected_current": None}
        )
        assert promoted.status_code == 200
        eventually(serves(two, 1), "version 1 on the second replica")  # its first read: a cache miss
        assert rendered_version(two, {"name": "x"}) == 1  # now cached there

        promoted = one.post("/v1/prompts/greeting/versions/2/promote", json={"to": "production", "expected_current": 1})
        assert promoted.status_code == 200
        eventually(serves(two, 2), "the promotion reaching the second replica")

        assert one.post("/v1/prompts/greeting/rollback", json={"reason": "regression"}).status_code == 200
        eventually(serves(two, 1), "the rollback reaching the second replica")
