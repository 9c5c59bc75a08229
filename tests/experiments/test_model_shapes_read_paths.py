"""Every model shape the API can create, read back through every read path.

Relationships are ``lazy="raise"``: a read path that touches one its query did not load fails,
sometimes only for one shape (a variant's config with a fallback once stopped all experiment
routing). The shapes: a prompt version with a config, a config with a fallback, and experiments
(draft, running, stopped with a winner) whose variants are a prompt version only, a version with
another config, and a version with a config that has a fallback. The paths: get, list (every
filter), history, diff, resolve, render, complete, preview, results, export, unit data, audit,
usage, a restarted process, and the command line's list commands. The change feed carries only
``{kind, name, action}``, read from no model, so it has nothing to load.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner

from registry.app import create_app
from registry.cli import main
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import free_port, serve_in_process
from tests.experiments.conftest import Client, flush_and_aggregate, make_metric, settle

FORCED = {"unit-a": "a", "unit-k": "k", "unit-f": "f"}
# Prompt-only (the version's own config, which has a fallback), another config, a config with a fallback.
VARIANTS = [
    {"key": "a", "prompt_version": 1},
    {"key": "k", "prompt_version": 2, "config": {"name": "plain", "version": 1}},
    {"key": "f", "prompt_version": 2, "config": {"name": "b", "version": 1}},
]
RANDOM_UNITS = [f"user-{i}" for i in range(30)]


@pytest.fixture
def settings(settings: Settings, fault: str) -> Settings:
    """A working backend, and one whose every request fails (config 'b' runs there, so its fallback serves)."""
    return settings.model_copy(update={"backends": {"fault": backend(fault), "down": backend(fault, max_retries=0)}})


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json() if response.headers.get("content-type", "").endswith("json") else response.content


async def make_config(client: Client, headers: dict[str, str], name: str, **version: Any) -> None:
    await ok(await client.post("/v1/configs", json={"name": name}, headers=headers), 201)
    await ok(await client.post(f"/v1/configs/{name}/versions", json=version, headers=headers), 201)
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/configs/{name}/versions/1/promote", json=promote, headers=headers))


async def make_prompt(client: Client, headers: dict[str, str], name: str) -> None:
    """Version 1 runs with config 'b' (which has a fallback), version 2 with none; 1 is in production."""
    await ok(await client.post("/v1/prompts", json={"name": name}, headers=headers), 201)
    for number, config in ((1, {"name": "b", "version": 1}), (2, None)):
        body = {"kind": "text", "template": f"v{number} says {{{{ x }}}}", "config": config}
        await ok(await client.post(f"/v1/prompts/{name}/versions", json=body, headers=headers), 201)
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/prompts/{name}/versions/1/promote", json=promote, headers=headers))


async def make_experiment(client: Client, headers: dict[str, str], key: str, prompt: str, *, start: bool) -> None:
    body = {
        "key": key,
        "prompt": prompt,
        "variants": VARIANTS,
        "forced_variants": FORCED,
        "primary_metric": "converted",
    }
    await ok(await client.post("/v1/experiments", json=body, headers=headers), 201)
    if start:
        await ok(await client.post(f"/v1/experiments/{key}/start", headers=headers))


@pytest.fixture
async def shaped(client: Client, admin: dict[str, str]) -> dict[str, str]:
    """Configs 'spare', 'plain' and 'b' (fallback spare@1); prompts 'greet' and 'old'; experiments 'shapes'
    (running on greet), 'shapes-draft' (draft on greet) and 'shapes-old' (stopped on old, won by variant f,
    whose config made a new production version)."""
    await make_config(client, admin, "spare", backend="fault", model="ok/spare")
    await make_config(client, admin, "plain", backend="fault", model="ok/plain")
    await make_config(
        client, admin, "b", backend="down", model="status:500:all/b", fallback={"name": "spare", "version": 1}
    )
    await make_prompt(client, admin, "greet")
    await make_prompt(client, admin, "old")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "shapes-old", "old", start=True)
    await ok(await client.post("/v1/experiments/shapes-old/stop", json={"winner": "f"}, headers=admin))
    await make_experiment(client, admin, "shapes", "greet", start=True)
    await make_experiment(client, admin, "shapes-draft", "greet", start=False)
    await settle(client)
    return admin


async def render(client: Client, headers: dict[str, str], prompt: str, unit: str) -> Any:
    body = {"variables": {"x": "hi"}, "unit": unit}
    return await ok(await client.post(f"/v1/prompts/{prompt}/render", json=body, headers=headers))


async def test_every_read_path_reads_every_shape(client: Client, shaped: dict[str, str]) -> None:
    admin = shaped
    get = client.get
    for key in ("shapes", "shapes-draft", "shapes-old"):
        definition = await ok(await get(f"/v1/experiments/{key}", headers=admin))
        assert [v["config"]["name"] if v["config"] else None for v in definition["variants"]] == [None, "plain", "b"]
    for params in ({}, {"status": "running"}, {"status": "draft"}, {"status": "stopped"}, {"prompt": "greet"}):
        assert (await ok(await get("/v1/experiments", params=params, headers=admin)))["items"]
    for path in (
        "/v1/configs",
        "/v1/configs/b",
        "/v1/configs/b/versions",
        "/v1/configs/b/versions/1",
        "/v1/configs/b/history",
        "/v1/prompts",
        "/v1/prompts/greet/versions",
        "/v1/prompts/greet/versions/1",
        "/v1/prompts/greet/history",
        "/v1/prompts/old/history",
        "/v1/audit",
    ):
        await ok(await get(path, headers=admin))
    fallback = (await ok(await get("/v1/configs/b", params={"version": 1}, headers=admin)))["fallback"]
    assert fallback == {"config": "spare", "version": 1}
    await ok(await get("/v1/prompts/greet/diff", params={"from": 1, "to": 2}, headers=admin))
    for params in ({}, {"label": "latest"}, {"version": 1}, {"unit": "unit-f"}):
        await ok(await get("/v1/prompts/greet", params=params, headers=admin))

    # The stopped experiment's winner ran version 2 with config b: production is a new version with b.
    assert (await render(client, admin, "old", "anyone"))["version"] == 3
    assert (await render(client, admin, "old", "anyone"))["config"]["name"] == "b"
    configs = {unit: (await render(client, admin, "greet", unit))["config"]["name"] for unit in FORCED}
    assert configs == {"unit-a": "b", "unit-k": "plain", "unit-f": "b"}
    preview = await client.post(
        "/v1/experiments/shapes-draft/preview", json={"unit": "unit-k", "variables": {"x": "hi"}}, headers=admin
    )
    assert (await ok(preview))["config"]["name"] == "plain"

    for unit in RANDOM_UNITS:  # hashed units are exposed, so results and exports have rows
        await render(client, admin, "greet", unit)
    now = datetime.now(UTC).isoformat()
    events = [
        {"unit": unit, "metric": "converted", "idempotency_key": f"e-{unit}", "timestamp": now} for unit in RANDOM_UNITS
    ]
    await ok(await client.post("/v1/events", json={"events": events}, headers=admin))
    await flush_and_aggregate(client)
    results = await ok(await get("/v1/experiments/shapes/results", headers=admin))
    assert results["units"] == len(RANDOM_UNITS)
    await ok(await get("/v1/experiments/shapes-old/results", headers=admin))
    for export_format in ("csv", "parquet"):
        await ok(await get("/v1/experiments/shapes/export", params={"format": export_format}, headers=admin))
    await ok(await get("/v1/units/user-1", headers=admin))


async def test_completions_run_each_variant_shape_with_its_config_and_fallback(
    client: Client, shaped: dict[str, str]
) -> None:
    admin = shaped
    answers = {}
    for unit in FORCED:
        body = {"variables": {"x": "hi"}, "unit": unit}
        answers[unit] = await ok(await client.post("/v1/prompts/greet/complete", json=body, headers=admin))
    usage = await ok(await client.get("/v1/usage", params={"group_by": ["experiment", "variant"]}, headers=admin))

    ran = {unit: (a["experiment"]["variant"], a["config"]["name"], a["fallback_used"]) for unit, a in answers.items()}
    assert ran == {"unit-a": ("a", "spare", True), "unit-k": ("k", "plain", False), "unit-f": ("f", "spare", True)}
    assert {(row["experiment"], row["variant"]) for row in usage["items"]} == {
        ("shapes", "a"),
        ("shapes", "k"),
        ("shapes", "f"),
    }


async def test_a_restarted_process_routes_every_variant_shape(
    client: Client, shaped: dict[str, str], settings: Settings
) -> None:
    async with serve_in_process(create_app(settings)) as restarted:
        variants = {unit: (await render(restarted, shaped, "greet", unit))["experiment"] for unit in FORCED}
        ready = await ok(await restarted.get("/ready"))

    assert {unit: v["variant"] for unit, v in variants.items()} == FORCED
    assert ready["experiments_unloadable"] == []


@pytest.fixture
async def served(settings: Settings, shaped: dict[str, str]) -> AsyncIterator[str]:
    """The app on a real port (the command line's client is synchronous)."""
    port = free_port()
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


@pytest.mark.parametrize(
    "command",
    [
        ["experiments", "list"],
        ["experiments", "list", "--status", "stopped"],
        ["experiments", "results", "shapes-old"],
        ["prompts", "list"],
        ["prompts", "list", "--config"],
        ["versions", "list", "greet"],
        ["versions", "list", "b", "--config"],
        ["history", "old"],
        ["history", "b", "--config"],
    ],
    ids=" ".join,
)
async def test_the_command_line_lists_every_shape(served: str, shaped: dict[str, str], command: list[str]) -> None:
    key = shaped["Authorization"].removeprefix("Bearer ")
    result = await asyncio.to_thread(
        CliRunner().invoke, main, [*command, "--url", served, "--api-key", key, "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
