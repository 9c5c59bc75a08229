"""The rollout check against the stand-in backend: completions through the registry, per-version behaviour
scripted by model names (``tests/completions/fault_server.py``), the checker driven by the test on a fake
clock. A candidate that errs is rolled back at once with its evidence; an equal one reaches 100% and is
promoted; one checker acts on a rollout at a time."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.rollouts.checker import RolloutChecker
from registry.settings import Settings
from tests.completions.conftest import backend, publish, unique
from tests.experiments.conftest import Client, in_app, runtime_of, settle
from tests.rollouts.conftest import FakeClock, check, fold_in, ok

BATCH = 20


@pytest.fixture
def settings(settings: Settings, fault: str) -> Settings:
    """A stand-in backend per config, without retries and with a breaker that never opens here."""
    stand_in = backend(fault, max_retries=0, breaker_failures=1000)
    return settings.model_copy(
        update={"backends": {"steady": stand_in, "candidate": stand_in}, "completion_usage_flush_seconds": 3600.0}
    )


async def prepare(
    client: Client, headers: dict[str, str], candidate_model: str, production_model: str = "status:500:2"
) -> None:
    """Prompt 'greet' version 1 with config 'steady' in production; config 'candidate' for the candidate;
    the guardrail metric 'failed' (any failed completion of a unit)."""
    limits = {"max_tokens": 100}
    await publish(client, headers, backend="steady", model=unique(production_model), config="steady", params=limits)
    await publish(
        client,
        headers,
        backend="candidate",
        model=candidate_model,
        config="candidate",
        prompt=None,
        params=limits,
    )
    metric = {"key": "failed", "kind": "binomial", "source": "completions", "source_field": "error"}
    await ok(await client.post("/v1/metrics", json={"direction": "lower", **metric}, headers=headers), 201)


async def start(client: Client, headers: dict[str, str], steps: list[dict[str, Any]]) -> dict[str, Any]:
    body = {
        "candidate_version": 1,
        "config": {"name": "candidate", "version": 1},
        "steps": steps,
        "guardrails": [{"metric": "failed", "tolerance": 0.02, "relative": False}],  # two points more errors
    }
    rollout = await ok(await client.post("/v1/prompts/greet/rollouts", json=body, headers=headers), 201)
    await settle(client)
    return rollout


async def complete(client: Client, headers: dict[str, str], units: range) -> None:
    for i in units:
        await client.post(
            "/v1/prompts/greet/complete",
            # 1 to 60 tokens: a trickling backend's answers take 1 to 60 of its intervals, so latencies spread
            # (a quantile whose interval falls on one latency has no variance, and is not tested)
            json={"variables": {"name": "Ada"}, "unit": f"user-{i}", "max_tokens": 1 + (7 * i) % 60},
            headers=headers,
        )
    await fold_in(client)


async def until_rolled_back(
    client: Client, headers: dict[str, str], rollout_id: int, *, limit: int
) -> tuple[int, dict[str, Any]]:
    """Completions for new units in batches, a check after each, until a rollback or ``limit`` units;
    the units sent and the rollout as it ended. Every other check holds (the step's minimum units are high)."""
    clock = FakeClock()
    sent = 0
    while sent < limit:
        await complete(client, headers, range(sent, sent + BATCH))
        sent += BATCH
        action = await check(client, rollout_id, clock)
        assert action is not None
        if action.kind == "rollback":
            break
        assert action.kind == "hold"
    return sent, await ok(await client.get(f"/v1/rollouts/{rollout_id}", headers=headers))


async def test_a_candidate_that_errs_is_rolled_back_with_its_evidence(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await prepare(client, admin, unique("status:500:30"))  # its first 30 completions fail
    rollout = await start(client, admin, [{"share": 0.5, "min_units": 1000}, {"share": 1.0}])
    sent, shown = await until_rolled_back(client, admin, rollout["id"], limit=400)
    assert shown["status"] == "rolled_back"
    assert "guardrail 'failed' is significantly worse" in shown["reason"]
    evidence = shown["evidence"]
    [guardrail] = evidence["guardrails"]
    assert guardrail["failed"]
    assert guardrail["worst_bound"] > 0.02
    taken = evidence["units"]["candidate"]
    print(f"rolled back after {sent} units, {taken} of them on the candidate")
    assert 0 < taken < sent
    assert [e["action"] for e in shown["events"]] == ["started", "rolled_back"]
    # Traffic is production's again.
    body = await ok(
        await client.post(
            "/v1/prompts/greet/render", json={"variables": {"name": "Ada"}, "unit": "user-1"}, headers=admin
        )
    )
    assert body["experiment"] is None
    async with clean_database.connect() as connection:
        types = (await connection.execute(text("SELECT type FROM outbox_events WHERE type LIKE 'rollout.%'"))).scalars()
        assert list(types) == ["rollout.started", "rollout.rolled_back"]


async def test_an_equal_candidate_reaches_all_traffic_and_is_promoted(client: Client, admin: dict[str, str]) -> None:
    await prepare(client, admin, unique("ok"))
    steps = [{"share": 0.5, "min_units": 30, "min_seconds": 60}, {"share": 1.0, "min_seconds": 60}]
    rollout = await start(client, admin, steps)
    clock = FakeClock()
    await complete(client, admin, range(40))
    assert (await check(client, rollout["id"], clock)).kind == "hold"  # type: ignore[union-attr]
    clock.advance(61)
    assert (await check(client, rollout["id"], clock)).kind == "advance"  # type: ignore[union-attr]
    await complete(client, admin, range(40, 60))
    assert (await check(client, rollout["id"], clock)).kind == "hold"  # type: ignore[union-attr]
    clock.advance(61)
    assert (await check(client, rollout["id"], clock)).kind == "promote"  # type: ignore[union-attr]
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=admin))
    assert shown["status"] == "completed"
    assert [e["action"] for e in shown["events"]] == ["started", "advanced", "completed"]
    promoted = shown["events"][-1]["detail"]["promoted_version"]
    production = await ok(await client.get("/v1/prompts/greet", params={"label": "production"}, headers=admin))
    assert production["version"]["version"] == promoted == 2  # version 1 with the candidate's config
    assert production["version"]["config"]["name"] == "candidate"
    history = await ok(await client.get("/v1/prompts/greet/history", headers=admin))
    assert any(rollout["experiment"] in (t["reason"] or "") for t in history["items"])  # the normal promotion


async def test_one_checker_acts_on_a_rollout_at_a_time(client: Client, admin: dict[str, str]) -> None:
    await prepare(client, admin, unique("ok"))
    rollout = await start(client, admin, [{"share": 0.5, "min_units": 10}, {"share": 1.0}])
    runtime = runtime_of(client.app)
    first, second = (
        RolloutChecker(runtime.sessionmaker, runtime.bus, runtime.prompt_limits, interval=5.0) for _ in range(2)
    )
    assert await in_app(client, lambda: first.check(rollout["id"])) is not None
    assert await in_app(client, lambda: second.check(rollout["id"])) is None  # the first holds the lease
    assert await in_app(client, lambda: first.check(rollout["id"])) is not None  # and renews it


async def test_a_candidate_slower_at_p95_is_rolled_back(client: Client, admin: dict[str, str]) -> None:
    # Answers of 3 to 180 ms against production's 1 to 60 ms.
    await prepare(client, admin, unique("trickle:0.003"), production_model="trickle:0.001")
    metric = {"key": "latency_p95", "kind": "quantile", "quantile": 0.95, "source_field": "latency_ms"}
    await ok(
        await client.post("/v1/metrics", json={"source": "completions", "direction": "lower", **metric}, headers=admin),
        201,
    )
    body = {
        "candidate_version": 1,
        "config": {"name": "candidate", "version": 1},
        "steps": [{"share": 0.5, "min_units": 1000}, {"share": 1.0}],
        "guardrails": [{"metric": "latency_p95", "tolerance": 0.1}],  # up to 10% slower is accepted
    }
    rollout = await ok(await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin), 201)
    await settle(client)
    sent, shown = await until_rolled_back(client, admin, rollout["id"], limit=300)
    assert shown["status"] == "rolled_back", str(shown["evidence"]["guardrails"])
    assert "guardrail 'latency_p95' is significantly worse" in shown["reason"], shown["evidence"]
    [guardrail] = shown["evidence"]["guardrails"]
    assert guardrail["worst_bound"] > 0.1
    print(f"rolled back after {sent} units, {shown['evidence']['units']['candidate']} of them on the candidate")
