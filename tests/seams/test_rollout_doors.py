"""A prompt in rollout, completed through /complete and through the OpenAI door: the same routing and records."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import unique
from tests.seams.conftest import Served, eventually, ok, rows

COMPLETE = "/v1/prompts/greet/complete"
CHAT = "/v1/chat/completions"


async def config(client: httpx.AsyncClient, admin: dict[str, str], name: str, **version: Any) -> None:
    await ok(await client.post("/v1/configs", json={"name": name}, headers=admin))
    body = {"params": {"temperature": 0, "max_tokens": 8}, **version}
    await ok(await client.post(f"/v1/configs/{name}/versions", json=body, headers=admin))
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/configs/{name}/versions/1/promote", json=promote, headers=admin))


async def prompt_in_rollout(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Any]:
    """greet: version 1 (config main) in production, version 2 the candidate with config cand, whose backend
    always fails so its fallback (spare) answers and whose output guard flags the stand-in's answer."""
    await config(client, admin, "main", backend="fault", model=unique("ok"))
    await config(client, admin, "spare", backend="fault", model=unique("ok"), output_price_per_mtok=1000.0)
    guard = {"name": "says-hello", "kind": "deny_patterns", "patterns": ["hello"], "on": "output", "action": "flag"}
    await config(
        client,
        admin,
        "cand",
        backend="flaky",
        model=unique("status:500:all"),
        fallback={"name": "spare"},
        guards=[guard],
    )
    await ok(await client.post("/v1/prompts", json={"name": "greet"}, headers=admin))
    for template in ("Say hello to {{ name }}.", "Greet {{ name }}."):
        version = {"kind": "chat", "messages": [{"role": "user", "content": template}], "config": {"name": "main"}}
        await ok(await client.post("/v1/prompts/greet/versions", json=version, headers=admin))
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post("/v1/prompts/greet/versions/1/promote", json=promote, headers=admin))
    await ok(await client.patch("/v1/prompts/greet", json={"store_io": True}, headers=admin))
    await ok(await client.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=admin))
    body = {
        "candidate_version": 2,
        "config": {"name": "cand", "version": 1},
        "steps": [{"share": 0.5, "min_units": 1_000_000}, {"share": 1.0}],
        "guardrails": [{"metric": "converted"}],
    }
    return await ok(await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin), 201)


async def side_of(client: httpx.AsyncClient, admin: dict[str, str], experiment: str, unit: str) -> str:
    preview = await ok(
        await client.post(
            f"/v1/experiments/{experiment}/preview", json={"unit": unit, "variables": {"name": "x"}}, headers=admin
        )
    )
    variant: str = preview["experiment"]["variant"]
    return variant


def door_body(unit: str, **extra: Any) -> dict[str, Any]:
    return {"model": "prompt:greet", "messages": [], "user": unit, "variables": {"name": "Ada"}, **extra}


async def test_both_doors_route_a_unit_alike_and_record_the_same_facts_as_their_headers_say(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    client = await served(completion_cache_ttl_seconds=60.0, rollout_check_seconds=3600.0)
    rollout = await prompt_in_rollout(client, admin)
    key = rollout["experiment"]
    units: dict[str, str] = {}
    for i in range(40):
        units.setdefault(await side_of(client, admin, key, f"user-{i}"), f"user-{i}")
    assert set(units) == {"production", "candidate"}
    created = await ok(await client.post("/v1/keys", json={"name": "app", "scopes": ["read"]}, headers=admin))
    app = {"Authorization": f"Bearer {created['key']}"}
    budget = {"monthly_tokens": 1000, "monthly_cost": 1.0}
    await ok(await client.put(f"/v1/keys/{created['api_key']['id']}/budget", json=budget, headers=admin))

    for side, unit in units.items():
        door = await client.post(CHAT, json=door_body(unit), headers=app)
        assert door.status_code == 200, door.text
        facts = door.json()["registry"]
        complete = await ok(await client.post(COMPLETE, json={"variables": {"name": "Ada"}, "unit": unit}, headers=app))
        for answer in (facts, complete):
            assert answer["experiment"] == {"key": key, "phase": 1, "variant": side, "in_experiment": True}
            assert answer["version"] == (2 if side == "candidate" else 1)
            assert answer["config"]["name"] == ("spare" if side == "candidate" else "main")
            assert answer["fallback_used"] is (side == "candidate")
        headers = door.headers
        assert (headers["x-registry-experiment"], headers["x-registry-variant"]) == (key, side)
        assert headers["x-registry-prompt-version"] == str(facts["version"])
        assert (headers["x-registry-config"], headers["x-registry-config-version"]) == (facts["config"]["name"], "1")
        assert headers["x-registry-fallback-used"] == ("true" if side == "candidate" else "false")
        assert float(headers["x-registry-cost"]) == facts["cost"]

    await ok(await client.get("/v1/usage", headers=admin))
    recorded = await rows(
        clean_database,
        "SELECT unit, experiment_key, variant, prompt_version, config, fallback_used, cached, guard_flagged, "
        "guard_outcomes, input_tokens, output_tokens, cost FROM completions ORDER BY id",
    )
    assert len(recorded) == 4
    for row in recorded:
        side = row["variant"]
        assert units[side] == row["unit"]
        assert row["experiment_key"] == key
        # The candidate's config (cand) guards its answers even when its fallback (spare) gave them.
        assert row["guard_flagged"] is (side == "candidate"), row
        if side == "candidate":
            assert [(o["guard"], o["outcome"]) for o in row["guard_outcomes"]] == [("says-hello", "flagged")]
    spend = await ok(await client.get(f"/v1/keys/{created['api_key']['id']}/budget", headers=admin))
    assert spend["used_tokens"] == sum(r["input_tokens"] + r["output_tokens"] for r in recorded)
    assert spend["used_cost"] == pytest.approx(sum(r["cost"] for r in recorded))

    async def exposed() -> bool:
        shown = [await ok(await client.get(f"/v1/units/{unit}", headers=admin)) for unit in units.values()]
        return all(len(s["exposures"]) + s["pending_exposures"] == 1 for s in shown)

    await eventually(exposed, "one exposure per unit, whichever door it came through")


async def streamed_facts(client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """The registry facts a stream of the OpenAI door carries in its last chunk, and its text."""
    async with client.stream("POST", CHAT, json={**body, "stream": True}, headers=headers) as response:
        assert response.status_code == 200
        raw = (await response.aread()).decode()
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert raw.rstrip().endswith("data: [DONE]")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    facts: dict[str, Any] = chunks[-1]["registry"]
    return {**facts, "text": text, "header_variant": response.headers.get("x-registry-variant")}


async def test_a_stream_through_the_door_names_the_rollouts_side_and_is_recorded_as_one(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    client = await served(rollout_check_seconds=3600.0)
    rollout = await prompt_in_rollout(client, admin)
    key = rollout["experiment"]
    units: dict[str, str] = {}
    for i in range(40):
        units.setdefault(await side_of(client, admin, key, f"user-{i}"), f"user-{i}")
    for side, unit in units.items():
        facts = await streamed_facts(client, admin, door_body(unit))
        assert facts["experiment"]["variant"] == side == facts["header_variant"]
        assert facts["fallback_used"] is (side == "candidate")
        assert facts["text"] == "Hello from the"
    await ok(await client.get("/v1/usage", headers=admin))
    recorded = await rows(clean_database, "SELECT unit, variant, stream, guard_flagged FROM completions ORDER BY id")
    assert [(r["unit"], r["variant"], r["stream"], r["guard_flagged"]) for r in recorded] == [
        (unit, side, True, side == "candidate") for side, unit in units.items()
    ]
