"""``registry experiments create|start|stop|results`` against a served app."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import uvicorn
from click.testing import CliRunner, Result

from registry.app import create_app
from registry.cli import main
from registry.settings import Settings
from tests.experiments.conftest import Client, flush_and_aggregate, make_metric, make_prompt, until_running_here


@pytest.fixture
async def served(settings: Settings, client: Client) -> AsyncIterator[str]:
    """The app on a free local port, served by uvicorn from a thread (the CLI's client is synchronous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.to_thread(thread.join, 10)


async def cli(url: str, headers: dict[str, str], *args: str) -> Result:
    key = headers["Authorization"].removeprefix("Bearer ")
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, main, [*args, "--url", url, "--api-key", key], catch_exceptions=False
    )
    return result


async def test_an_experiment_from_the_command_line(client: Client, admin: dict[str, str], served: str) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    created = await cli(
        served,
        admin,
        "experiments",
        "create",
        "greet-test",
        "--prompt",
        "greet",
        "--variant",
        "control=1",
        "--variant",
        "treatment=2:1",
        "--primary-metric",
        "converted",
    )
    assert created.exit_code == 0, created.output
    assert "greet-test on greet: draft, phase 0" in created.output
    started = await cli(served, admin, "experiments", "start", "greet-test")
    assert "running, phase 1" in started.output
    await until_running_here(client, "greet-test")

    now = datetime.now(UTC).isoformat()
    for i in range(20):
        await client.post("/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": f"u{i}"}, headers=admin)
    events = [{"unit": f"u{i}", "metric": "converted", "idempotency_key": f"k{i}", "timestamp": now} for i in range(12)]
    await client.post("/v1/events", json={"events": events}, headers=admin)
    await flush_and_aggregate(client)

    results = await cli(served, admin, "experiments", "results", "greet-test")
    assert results.exit_code == 0, results.output
    assert "greet-test phase 1 (running): 20 units" in results.output
    assert "converted (primary, binomial, higher is better)" in results.output
    assert "VARIANT    UNITS  MEAN" in results.output

    stopped = await cli(served, admin, "experiments", "stop", "greet-test", "--winner", "treatment")
    assert stopped.exit_code == 0, stopped.output
    assert "greet v2 is now in production" in stopped.output

    bad = await cli(served, admin, "experiments", "start", "greet-test")
    assert bad.exit_code == 4, "a conflict"
    assert "only a draft can start" in bad.output
