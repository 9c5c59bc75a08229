"""Completions routed by a real experiment whose variants run with their own model config.

The registry runs with its own experiment router (the ``registry`` fixture replaces it with a stub),
so this is the path an app takes: a unit in a running experiment gets the variant's version and
config, and when that config's backend fails, the config's fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.settings import Settings
from tests.completions.conftest import backend, publish, serve_in_thread, unique
from tests.completions.fault_server import FaultServer

COMPLETE = "/v1/prompts/greet/complete"
FORCED = {"unit-c": "c", "unit-t": "t", "unit-u": "u"}


@pytest.fixture
def served(settings: Settings, clean_database: AsyncEngine, fault: FaultServer) -> Iterator[str]:
    url = fault.url  # type: ignore[attr-defined]
    backends = {"fault": backend(url), "flaky": backend(url, max_retries=0)}
    with serve_in_thread(create_app(settings.model_copy(update={"backends": backends}))) as base:
        yield base


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def routed(client: httpx.AsyncClient, headers: dict[str, str], unit: str) -> None:
    """Wait until the server's router (on the server's own loop) has loaded the started experiment."""
    for _ in range(250):
        response = await client.post(
            "/v1/prompts/greet/render", json={"variables": {"name": "x"}, "unit": unit}, headers=headers
        )
        if (await ok(response))["experiment"] is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the experiment never routed")


async def test_a_variant_completes_with_its_config_and_falls_back_to_that_configs_fallback(
    served: str, admin: dict[str, str], fault: FaultServer
) -> None:
    failing = unique("status:500:all")
    fast = unique("ok")
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        await publish(client, admin, backend="fault", model=unique("ok"), max_context_tokens=4096)
        second = {"kind": "chat", "messages": [{"role": "user", "content": "Greet {{ name }}."}]}
        await ok(await client.post("/v1/prompts/greet/versions", json=second, headers=admin))
        await publish(client, admin, backend="fault", model=unique("ok"), config="spare", prompt=None)
        spare = {"name": "spare"}
        await publish(client, admin, backend="flaky", model=failing, config="b", fallback=spare, prompt=None)
        await publish(client, admin, backend="fault", model=fast, config="fast", prompt=None)
        await ok(await client.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=admin))
        experiment = {
            "key": "tone",
            "prompt": "greet",
            "variants": [
                {"key": "c", "prompt_version": 1},
                {"key": "t", "prompt_version": 2, "config": {"name": "b", "version": 1}},
                {"key": "u", "prompt_version": 2, "config": {"name": "fast", "version": 1}},
            ],
            "forced_variants": FORCED,
            "primary_metric": "converted",
        }
        await ok(await client.post("/v1/experiments", json=experiment, headers=admin))
        await ok(await client.post("/v1/experiments/tone/start", headers=admin))
        await routed(client, admin, "unit-c")

        answers = {
            unit: await ok(
                await client.post(COMPLETE, json={"variables": {"name": "Ada"}, "unit": unit}, headers=admin)
            )
            for unit in FORCED
        }

    control, treated, fast_variant = answers["unit-c"], answers["unit-t"], answers["unit-u"]
    assert control["experiment"]["variant"] == "c"
    assert (control["version"], control["config"]["name"], control["fallback_used"]) == (1, "cfg", False)
    assert treated["experiment"]["variant"] == "t"
    assert (treated["version"], treated["config"]["name"], treated["fallback_used"]) == (2, "spare", True)
    assert len(fault.seen(failing, "/v1/chat/completions")) == 1  # the variant's own config was tried first
    assert fast_variant["experiment"]["variant"] == "u"
    assert (fast_variant["version"], fast_variant["config"]["name"], fast_variant["fallback_used"]) == (
        2,
        "fast",
        False,
    )
    assert fast_variant["config"]["model"] == fast
