"""Process roles: API processes keep request handling free of the shared background work."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from litestar import Litestar, Request, post

from registry.app import create_app
from registry.lib.jobs import PeriodicJob, Role
from registry.runtime import Runtime
from registry.settings import Settings
from tests.api import Headers, create_prompt, create_version
from tests.conftest import free_port, serve_in_process, serve_over_http

SHARED = {"experiment-statistics", "webhooks", "completion-text-retention"}


async def nothing() -> None:
    return None


@pytest.mark.parametrize(
    ("role", "shared", "runs"),
    [
        ("all", True, True),
        ("all", False, True),
        ("api", False, True),
        ("api", True, False),
        ("worker", True, True),
        ("worker", False, False),
    ],
)
def test_which_role_runs_which_job(role: Role, shared: bool, runs: bool) -> None:
    assert PeriodicJob("job", 1.0, nothing, shared=shared).runs_in(role) is runs


@pytest.mark.parametrize("role", ["all", "api", "worker"])
async def test_runtimes_schedule_the_jobs_of_their_role(settings: Settings, role: Role) -> None:
    runtime = Runtime.build(settings.model_copy(update={"role": role}))
    await runtime.engine.dispose()
    await runtime.http.close()
    if runtime.redis is not None:
        await runtime.redis.aclose()
    names = {job.name for job in runtime.jobs}
    assert (names >= SHARED) is (role != "api")
    assert ("experiment-exposures" in names) is (role != "worker")


async def test_a_worker_process_delivers_what_an_api_process_recorded(
    settings: Settings, database_url: str, redis_prefix: str, admin: Headers
) -> None:
    received: list[bytes] = []

    @post("/hook", status_code=200)
    async def hook(request: Request[object, object, object]) -> None:
        received.append(await request.body())

    api = create_app(settings.model_copy(update={"role": "api", "webhook_dispatch_interval_seconds": 0.2}))
    async with serve_over_http(Litestar([hook])) as receiver, serve_in_process(api) as client:
        response = await client.post("/v1/webhooks", json={"url": f"{receiver}/hook", "events": ["*"]}, headers=admin)
        assert response.status_code == 201
        await create_prompt(client, admin, "greeting")
        await create_version(client, admin, "greeting")
        await asyncio.sleep(0.5)
        assert received == [], "an API process must leave deliveries to the worker"
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env.update(
            REGISTRY_DATABASE_URL=database_url,
            REGISTRY_REDIS_URL=settings.redis_url or "",
            REGISTRY_REDIS_KEY_PREFIX=redis_prefix,
            REGISTRY_WEBHOOK_DISPATCH_INTERVAL_SECONDS="0.2",
            REGISTRY_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.0/8"]',  # the receiver listens on this machine
            REGISTRY_WORKER_PORT=str(free_port()),  # not the default, which another test run may hold
        )
        worker = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "registry"), "worker", env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            for _ in range(100):
                if len(received) >= 1:
                    break
                await asyncio.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, raw_stderr = await asyncio.wait_for(worker.communicate(), timeout=20)
    stderr = raw_stderr.decode()
    assert worker.returncode == 0, stderr
    assert "webhooks" in stderr
    assert len(received) == 1
    assert b"prompt.version.created" in received[0]
