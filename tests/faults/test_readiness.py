"""Readiness through the outages a replica survives, through a drain, and on the worker's own port.

``/ready`` steers traffic: a replica that still serves its read path must stay
in (200, ``degraded``), one that cannot serve (nothing cached and no database)
or that is draining after SIGTERM must be taken out (503).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.app import create_app
from registry.auth.keys import Scope
from registry.cli import migrate_database
from registry.settings import Settings
from tests.conftest import AppClient, free_port, make_key_on, serve_in_process
from tests.faults.processes import (
    REGISTRY,
    ROOT,
    PrivatePostgres,
    RegistryProcess,
    admin_headers,
    make_prompt,
    ok,
    registry_env,
    wait_until,
)

RENDER = {"variables": {"x": "y"}}


def closed_port() -> int:
    """A port nothing listens on: connections to it are refused at once."""
    return free_port()


@pytest.fixture
async def migrated(postgres: PrivatePostgres) -> Settings:
    settings = Settings(database_url=postgres.url, bootstrap_admin_key=False, log_level="WARNING", access_log=False)
    await migrate_database(settings)
    return settings


async def publish(http: AppClient, headers: dict[str, str], name: str) -> None:
    assert (await http.post("/v1/prompts", json={"name": name}, headers=headers)).status_code == 201
    version = {"kind": "text", "template": "says {{ x }}"}
    assert (await http.post(f"/v1/prompts/{name}/versions", json=version, headers=headers)).status_code == 201
    promote = {"to": "production", "expected_current": None}
    assert (await http.post(f"/v1/prompts/{name}/versions/1/promote", json=promote, headers=headers)).status_code == 200


async def test_with_redis_unreachable_ready_is_200_degraded_while_renders_work(migrated: Settings) -> None:
    settings = migrated.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"})
    headers = await make_key_on(settings, Scope.ADMIN, name="redis-down")
    async with serve_in_process(create_app(settings)) as http:
        await publish(http, headers, "ready-redis-down")
        render = await http.post("/v1/prompts/ready-redis-down/render", json=RENDER, headers=headers)
        ready = await http.get("/ready")
    assert render.status_code == 200, render.text
    assert render.json()["text"] == "says y"
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "degraded"
    assert body["database"] == "ok"
    assert body["redis"].startswith("unavailable")
    assert body["experiments_unloadable"] == []


async def test_with_postgres_down_a_replica_with_prompts_cached_is_degraded_and_an_empty_one_is_not_ready(
    postgres: PrivatePostgres, migrated: Settings
) -> None:
    headers = await make_key_on(migrated, Scope.ADMIN, name="postgres-down")
    loaded_app, empty_app = create_app(migrated), create_app(migrated)
    async with serve_in_process(loaded_app) as loaded, serve_in_process(empty_app) as empty:
        await publish(loaded, headers, "ready-postgres-down")
        assert (await loaded.post("/v1/prompts/ready-postgres-down/render", json=RENDER, headers=headers)).is_success
        assert (await loaded.get("/ready")).json()["status"] == "ready"
        postgres.stop()
        try:
            render = await loaded.post("/v1/prompts/ready-postgres-down/render", json=RENDER, headers=headers)
            loaded_ready = await loaded.get("/ready")
            empty_ready = await empty.get("/ready")
        finally:
            postgres.start()
    assert render.status_code == 200, render.text
    assert render.json()["text"] == "says y"
    assert loaded_ready.status_code == 200, loaded_ready.text
    assert loaded_ready.json()["status"] == "degraded"
    assert loaded_ready.json()["database"].startswith("unavailable")
    assert empty_ready.status_code == 503, empty_ready.text
    assert empty_ready.json()["status"] == "not ready"
    assert empty_ready.json()["database"].startswith("unavailable")


async def test_with_nothing_loaded_and_the_database_unreachable_ready_is_503(migrated: Settings) -> None:
    unreachable = migrated.model_copy(
        update={
            "database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/none",
            "database_connect_timeout": 0.5,
        }
    )
    async with serve_in_process(create_app(unreachable)) as http:
        ready = await http.get("/ready")
        health = await http.get("/health")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not ready"
    assert ready.json()["database"].startswith("unavailable")
    assert health.status_code == 200  # alive: only readiness says it cannot serve


# --------------------------------------------------------------------------- drain on SIGTERM


@pytest.fixture(params=["granian", "uvicorn"])
def draining_server(
    request: pytest.FixtureRequest, postgres: PrivatePostgres, tmp_path: Path
) -> Iterator[RegistryProcess]:
    # Long enough that polling sees the drain however slow the machine. Under granian a second SIGTERM ends it, so
    # it is longer than the test's patience: a drain that went on would fail the test, not only slow it.
    drain = "20" if request.param == "uvicorn" else "300"
    env = registry_env(postgres.url, None, server=request.param, shutdown_drain_seconds=drain)
    server = RegistryProcess(env, tmp_path / "registry.log")
    try:
        yield server
    finally:
        server.close()


def test_on_sigterm_ready_answers_503_while_new_connections_are_still_served_then_the_server_exits(
    draining_server: RegistryProcess, postgres: PrivatePostgres
) -> None:
    server = draining_server
    headers = admin_headers(postgres.url)
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        make_prompt(http, f"drain-{free_port()}", versions=1)
        assert http.get("/ready").json()["status"] == "ready"

    server.process.send_signal(signal.SIGTERM)
    seen: list[httpx.Response] = []

    def draining() -> bool:
        # A new connection each time: the listener must still accept while the replica says it is leaving.
        response = httpx.get(f"{server.url}/ready", timeout=5, headers={"Connection": "close"})
        seen.append(response)
        return response.status_code == 503

    wait_until(draining, timeout=15, message=f"/ready never turned 503 after SIGTERM\n{server.log()}")
    during = httpx.get(f"{server.url}/health", timeout=5, headers={"Connection": "close"})
    if server.env["REGISTRY_SERVER"] == "granian":
        server.process.send_signal(signal.SIGTERM)  # a second one stops at once (uvicorn's drain runs its course)
    server.process.wait(60)

    assert seen[-1].json()["status"] == "draining"
    assert all(response.status_code == 200 for response in seen[:-1])  # ready until the signal took effect
    assert during.status_code == 200, "still serving during the drain"
    # A clean exit; uvicorn re-raises the stop signal once it has shut down, so its status names SIGTERM.
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()


# --------------------------------------------------------------------------- the worker's probes


def test_registry_worker_serves_health_ready_and_metrics_on_its_own_port(
    postgres: PrivatePostgres, tmp_path: Path
) -> None:
    import subprocess

    # A drain no test could wait out: the worker takes no traffic, so it stops without one.
    env = registry_env(postgres.url, None, worker_port=str(free_port()), shutdown_drain_seconds="300")
    url = f"http://127.0.0.1:{env['REGISTRY_WORKER_PORT']}"
    log_path = tmp_path / "worker.log"
    with log_path.open("ab") as log:
        worker = subprocess.Popen(
            [REGISTRY, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        try:

            def answers() -> bool:
                assert worker.poll() is None, f"the worker exited\n{log_path.read_text()}"
                try:
                    return httpx.get(f"{url}/health", timeout=0.5).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(answers, timeout=30, message=f"the worker's probes did not answer\n{log_path.read_text()}")
            ready = httpx.get(f"{url}/ready", timeout=5)
            metrics = httpx.get(f"{url}/metrics", timeout=5)
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{env['REGISTRY_PORT']}/health", timeout=1)  # no API on the worker
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)

    assert ok(ready)["status"] == "ready"
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "registry_webhook_deliveries_total" in metrics.text
    assert worker.returncode == 0, log_path.read_text()
