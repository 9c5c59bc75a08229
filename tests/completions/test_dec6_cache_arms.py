"""The exact cache inside an experiment: two arms on one prompt version and the same model, differing only in
their config, never share an answer; a hit is recorded with its unit's variant, as cached, at no cost; and a hit
streamed through the OpenAI door has a live stream's shape (role, content, finish with the registry's facts,
usage, ``[DONE]``). In Redis and in the process.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.completions.cached_registry import SHAPES, CachedRegistry, serve_cached_registry
from tests.completions.conftest import backend, publish, unique, until
from tests.completions.fault_server import CHAT, FaultServer

DETERMINISTIC = {"max_tokens": 8, "temperature": 0}
FORCED = {"unit-a1": "a", "unit-a2": "a", "unit-b1": "b"}


@pytest.fixture(params=SHAPES)
async def served(
    request: pytest.FixtureRequest, settings: Settings, clean_database: AsyncEngine, tmp_path: Path, fault: FaultServer
) -> AsyncIterator[CachedRegistry]:
    async with serve_cached_registry(
        request.param, settings, tmp_path, backends={"fault": backend(fault.url)}
    ) as registry:
        yield registry


def chunks(raw: str) -> list[Any]:
    """An OpenAI stream's events: each chunk's JSON, and ``[DONE]`` as the string."""
    events = [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


def shape(events: list[Any]) -> list[str]:
    """What each event is, runs of content chunks folded into one."""
    kinds: list[str] = []
    for event in events:
        if event == "[DONE]":
            kind = "done"
        elif not event["choices"]:
            kind = "usage"
        elif event["choices"][0]["finish_reason"] is not None:
            kind = "finish"
        elif "role" in event["choices"][0]["delta"]:
            kind = "role"
        else:
            kind = "content"
        if not kinds or kinds[-1] != kind or kind != "content":
            kinds.append(kind)
    return kinds


async def test_arms_differing_only_in_config_never_share_an_answer_and_a_hit_is_recorded_with_its_variant(
    served: CachedRegistry, fault: FaultServer
) -> None:
    client, admin = served.client, served.admin
    model = unique("ok")  # one model, one answer, for both arms
    await publish(client, admin, backend="fault", model=model, params=DETERMINISTIC, store_io=True)
    await publish(client, admin, backend="fault", model=model, config="other", params=DETERMINISTIC, prompt=None)
    metric = await client.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=admin)
    assert metric.status_code == 201, metric.text
    experiment = {
        "key": unique("arms").replace("/", "-"),
        "prompt": "greet",
        "variants": [
            {"key": "a", "prompt_version": 1},
            {"key": "b", "prompt_version": 1, "config": {"name": "other", "version": 1}},
        ],
        "forced_variants": FORCED,
        "primary_metric": "converted",
    }
    created = await client.post("/v1/experiments", json=experiment, headers=admin)
    assert created.status_code == 201, created.text
    started = await client.post(f"/v1/experiments/{experiment['key']}/start", headers=admin)
    assert started.status_code == 200, started.text

    async def routed() -> bool:
        rendered = await client.post(
            "/v1/prompts/greet/render", json={"variables": {"name": "x"}, "unit": "unit-b1"}, headers=admin
        )
        return bool(rendered.json()["experiment"])

    await until(routed, "the experiment to route")

    def body(unit: str) -> dict[str, Any]:
        return {"variables": {"name": "Ada"}, "unit": unit}

    first = await client.post("/v1/prompts/greet/complete", json=body("unit-a1"), headers=admin)
    other_arm = await client.post("/v1/prompts/greet/complete", json=body("unit-b1"), headers=admin)
    same_arm = await client.post("/v1/prompts/greet/complete", json=body("unit-a2"), headers=admin)
    door = {"model": "prompt:greet", "variables": {"name": "Ada"}, "stream": True}
    door_options = {"stream_options": {"include_usage": True}}
    streamed_hit = await client.post(
        "/v1/chat/completions", json={**door, **door_options, "user": "unit-a2"}, headers=admin
    )

    answers = [first.json(), other_arm.json(), same_arm.json()]
    assert [(a["experiment"]["variant"], a["config"]["name"], a["cached"]) for a in answers] == [
        ("a", "cfg", False),
        ("b", "other", False),  # the same request text and model: still the model's own answer for this arm
        ("a", "cfg", True),
    ]
    assert answers[2]["text"] == answers[0]["text"]
    assert answers[2]["cost"] == 0.0
    assert len(fault.seen(model, CHAT)) == 2  # one per arm; the hits asked nothing

    assert streamed_hit.status_code == 200, streamed_hit.text
    assert streamed_hit.headers["x-registry-cached"] == "true"
    assert streamed_hit.headers["x-registry-variant"] == "a"
    events = chunks(streamed_hit.text)
    assert shape(events) == ["role", "content", "finish", "usage", "done"]  # a live stream's, once folded
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == answers[0]["text"]
    assert events[-3]["registry"]["cached"] is True
    assert events[-2]["usage"]["completion_tokens"] == answers[0]["usage"]["output_tokens"]
    assert len(fault.seen(model, CHAT)) == 2

    assert (await client.get("/v1/usage", headers=admin)).status_code == 200  # writes the buffer
    query = text("SELECT unit, variant, config, cached, cost, input_tokens FROM completions ORDER BY id")
    async with served.engine.connect() as connection:
        rows = [tuple(row) for row in (await connection.execute(query)).all()]
    assert [(unit, variant, config, bool(cached)) for unit, variant, config, cached, _, _ in rows] == [
        ("unit-a1", "a", "cfg", False),
        ("unit-b1", "b", "other", False),
        ("unit-a2", "a", "cfg", True),
        ("unit-a2", "a", "cfg", True),
    ]
    assert [(float(cost), tokens) for *_, cost, tokens in rows[2:]] == [(0.0, 0), (0.0, 0)]
