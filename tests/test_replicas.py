"""Two real server processes on one PostgreSQL and one Redis: a change made through one is served by the other."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.settings import Settings
from tests.conftest import free_port
from tests.test_cli import Server

MAX_PROPAGATION = 1.0  # seconds


@pytest.fixture
def replicas(settings: Settings, redis_prefix: str, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(
        REGISTRY_DATABASE_URL=settings.database_url,
        REGISTRY_REDIS_URL=settings.redis_url or "",
        REGISTRY_REDIS_KEY_PREFIX=redis_prefix,
        REGISTRY_ACCESS_LOG="false",
        REGISTRY_BOOTSTRAP_ADMIN_KEY="false",
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


def seconds_until(http: httpx.Client, version: int) -> float:
    started = time.monotonic()
    while rendered_version(http, {"name": "x"}) != version:
        assert time.monotonic() - started < 5, f"version {version} never reached this replica"
        time.sleep(0.01)
    return time.monotonic() - started


def test_promotions_and_rollbacks_reach_the_other_replica_within_a_second(
    replicas: tuple[Server, Server], admin: dict[str, str]
) -> None:
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
        assert seconds_until(two, 1) < MAX_PROPAGATION  # first read on the second replica: a cache miss
        assert rendered_version(two, {"name": "x"}) == 1  # now cached there

        started = time.monotonic()
        promoted = one.post("/v1/prompts/greeting/versions/2/promote", json={"to": "production", "expected_current": 1})
        assert promoted.status_code == 200
        assert seconds_until(two, 2) < MAX_PROPAGATION
        promotion_seen = time.monotonic() - started

        started = time.monotonic()
        assert one.post("/v1/prompts/greeting/rollback", json={"reason": "regression"}).status_code == 200
        assert seconds_until(two, 1) < MAX_PROPAGATION
        rollback_seen = time.monotonic() - started
    seen = f"promotion seen after {promotion_seen * 1000:.0f} ms, rollback after {rollback_seen * 1000:.0f} ms"
    print(f"the other replica: {seen}")
