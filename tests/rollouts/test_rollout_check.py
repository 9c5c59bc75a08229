"""The rollout check against the stand-in backend, end to end: completions through the registry's own
``/complete``, each version's error rate and latency spread scripted by its model name
(``tests/completions/fault_server.py``: ``errors:R``, ``latency:LOW:HIGH``), the real checker on a fake clock.
A candidate with five points more errors than production is rolled back, with the units it took in its
evidence; one 20% slower at p95 likewise; an equal one reaches 100% and is promoted; one checker acts on a
rollout at a time.

The stand-in models carry fixed tags, so their error and latency sequences are the same in every run; only
the rollout's seed (which units get the candidate) differs between runs.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.rollouts.checker import RolloutChecker
from registry.settings import Settings
from registry.stats.guardrails import sequential_srm_p_value, srm_log_bayes_factor
from tests.completions.conftest import backend
from tests.experiments.conftest import Client, in_app, runtime_of
from tests.rollouts.simulation import ERRORS_GUARDRAIL, LATENCY_GUARDRAIL, Simulation, create_metrics, ok

# Production fails 5% of its completions; answers take 100 to 500 ms, 120 to 600 ms (20% slower) for the slow one.
PRODUCTION = "errors:0.05/rollout-check-production"
MORE_ERRORS = "errors:0.10/rollout-check-more-errors"
EQUAL = "errors:0.05/rollout-check-equal"
PRODUCTION_LATENCY = "latency:100:500/rollout-check-production"
SLOWER = "latency:120:600/rollout-check-slower"
HOLD = [{"share": 0.5, "min_units": 1_000_000}, {"share": 1.0}]  # half the traffic until the guardrails decide


@pytest.fixture
def settings(settings: Settings, fault: str) -> Settings:
    """The stand-in backend, without retries and with a breaker that never opens here."""
    stand_in = backend(fault, max_retries=0, breaker_failures=1_000_000)
    return settings.model_copy(update={"backends": {"stand-in": stand_in}, "completion_usage_flush_seconds": 3600.0})


async def simulation(client: Client, headers: dict[str, str], production: str, candidate: str) -> Simulation:
    await create_metrics(client, headers)
    sim = Simulation(client, client.app, headers)
    await sim.prepare(production_model=production, candidate_model=candidate)
    return sim


async def test_a_candidate_with_five_points_more_errors_is_rolled_back_and_the_units_it_took_reported(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    sim = await simulation(client, admin, PRODUCTION, MORE_ERRORS)
    rollout = await sim.start(HOLD, [ERRORS_GUARDRAIL])
    feed = sim.runtime.feed.listen()
    outcome = await sim.run(rollout["id"], batch=100, limit=4000)
    shown = outcome.rollout
    assert outcome.status == "rolled_back", shown["evidence"]
    assert set(outcome.actions[:-1]) <= {"hold"}
    assert shown["reason"] == "guardrail 'failed' is significantly worse"
    evidence = shown["evidence"]
    assert evidence["action"] == "rollback"
    [guardrail] = evidence["guardrails"]
    assert guardrail["metric"] == "failed"
    assert guardrail["failed"]
    assert guardrail["worst_bound"] > 0 < guardrail["estimate"]
    # The units it took: every unit sent, split between the two sides, is in the evidence.
    units = evidence["units"]
    assert units["production"] + units["candidate"] == outcome.units
    assert 0 < units["candidate"] < outcome.units
    assert evidence["units_total"] == units  # one step: all steps' units are this step's
    print(f"rolled back after {outcome.units} units, {units['candidate']} of them on the candidate")
    assert [e["action"] for e in shown["events"]] == ["started", "rolled_back"]
    assert shown["events"][-1]["detail"]["evidence"] == evidence
    # Traffic is production's again.
    statuses = await sim.complete(40)
    assert statuses.count(200) > 0
    body = await ok(
        await client.post(
            "/v1/prompts/greet/render", json={"variables": {"name": "Ada"}, "unit": "user-1"}, headers=admin
        )
    )
    assert body["experiment"] is None
    assert body["version"] == 1
    # The rollout's history (above), the prompt's audit log, the change feed and the webhooks' outbox say so.
    # (The prompt's label history has nothing to say: a rollback moves no label, production never left v1.)
    audit = await ok(await client.get("/v1/audit", params={"resource_type": "prompt"}, headers=admin))
    [said] = [a for a in audit["items"] if a["action"] == "rollout.rolled_back"]
    assert (said["resource_name"], said["actor"]) == ("greet", "rollout-check")
    assert said["after"]["reason"] == shown["reason"]
    assert said["after"]["evidence"] == evidence
    changes = []
    while not feed.queue.empty():
        item = feed.queue.get_nowait()
        if item.change is not None:
            changes.append((item.change.kind, item.change.name, item.change.action))
    assert ("prompt", "greet", "rollout_rolled_back") in changes
    assert ("experiment", rollout["experiment"], "stopped") in changes
    sim.runtime.feed.forget(feed)
    async with clean_database.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT type, subject, payload FROM outbox_events WHERE type LIKE 'rollout.%' ORDER BY id")
            )
        ).all()
    assert [(t, subject) for t, subject, _ in rows] == [("rollout.started", "greet"), ("rollout.rolled_back", "greet")]
    webhook = rows[-1][2]
    assert (webhook["status"], webhook["reason"], webhook["evidence"]) == ("rolled_back", shown["reason"], evidence)


async def test_a_candidate_twenty_percent_slower_at_p95_is_rolled_back(client: Client, admin: dict[str, str]) -> None:
    sim = await simulation(client, admin, PRODUCTION_LATENCY, SLOWER)
    sim.concurrency, sim.spacing = 50, 0.01  # a request every 10 ms, as many in flight as that makes
    rollout = await sim.start(HOLD, [LATENCY_GUARDRAIL])
    # The latencies are the registry's own measure: on a busy machine what it adds to both arms' waits spreads
    # them, so the check needs more units to decide (a few hundred on a quiet one); it ends at the rollback.
    outcome = await sim.run(rollout["id"], batch=50, limit=2000)
    shown = outcome.rollout
    assert outcome.status == "rolled_back", shown["evidence"]["guardrails"]
    assert shown["reason"] == "guardrail 'latency_p95' is significantly worse"
    [guardrail] = shown["evidence"]["guardrails"]
    assert guardrail["worst_bound"] > LATENCY_GUARDRAIL["tolerance"]
    assert 0.1 < guardrail["estimate"] < 0.35, guardrail  # about +20%
    print(f"rolled back after {outcome.units} units, {outcome.candidate_units} of them on the candidate")


async def test_an_equal_candidate_reaches_all_traffic_and_is_promoted(client: Client, admin: dict[str, str]) -> None:
    sim = await simulation(client, admin, PRODUCTION, EQUAL)
    steps = [
        {"share": 0.05, "min_units": 100},
        {"share": 0.25, "min_units": 100},
        {"share": 0.5, "min_units": 100},
        {"share": 1.0, "min_seconds": 120},
    ]
    rollout = await sim.start(steps, [ERRORS_GUARDRAIL])
    outcome = await sim.run(rollout["id"], batch=50, limit=1000)
    shown = outcome.rollout
    assert outcome.status == "completed", shown["evidence"]
    # Each step held until its minimum units, the last until its minimum duration on the fake clock.
    assert outcome.actions == ["hold", "advance"] * 3 + ["hold", "promote"]
    assert [e["action"] for e in shown["events"]] == ["started", "advanced", "advanced", "advanced", "completed"]
    for event in shown["events"][1:4]:
        [guardrail] = event["detail"]["evidence"]["guardrails"]
        assert not guardrail["failed"]
    # Every unit sent is in the units of all steps (each completed once, so in one step only), the candidate's
    # too; and the split's always-valid p-value only ever fell, carried from check to check through the database.
    totals = shown["evidence"]["units_total"]
    assert totals["production"] + totals["candidate"] == outcome.units
    assert outcome.candidate_units_in_all_steps == totals["candidate"] > shown["evidence"]["units"]["candidate"] > 0
    checks = [e["detail"]["evidence"] for e in shown["events"][1:4]] + [shown["evidence"]]
    p_values = [c["srm_p_value"] for c in checks]
    assert p_values == sorted(p_values, reverse=True), p_values
    assert all(c["srm_p_value"] >= 0.01 and not c["srm_failed"] for c in checks)
    promoted = shown["events"][-1]["detail"]["promoted_version"]
    production = await ok(await client.get("/v1/prompts/greet", params={"label": "production"}, headers=admin))
    assert production["version"]["version"] == promoted == 2  # version 1 with the candidate's config
    assert production["version"]["config"]["name"] == "greet-candidate"
    history = await ok(await client.get("/v1/prompts/greet/history", headers=admin))
    assert any(rollout["experiment"] in (t["reason"] or "") for t in history["items"])  # the normal promotion


async def test_one_checker_acts_on_a_rollout_at_a_time(client: Client, admin: dict[str, str]) -> None:
    sim = await simulation(client, admin, PRODUCTION, EQUAL)
    rollout = await sim.start([{"share": 0.5, "min_units": 10}, {"share": 1.0}], [ERRORS_GUARDRAIL])
    runtime = runtime_of(client.app)
    first, second = (
        RolloutChecker(runtime.sessionmaker, runtime.bus, runtime.prompt_limits, interval=5.0) for _ in range(2)
    )
    assert await in_app(client, lambda: first.check(rollout["id"])) is not None
    assert await in_app(client, lambda: second.check(rollout["id"])) is None  # the first holds the lease
    assert await in_app(client, lambda: first.check(rollout["id"])) is not None  # and renews it


async def test_the_split_p_value_is_carried_from_the_recorded_evidence_to_a_checker_started_anew(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    sim = await simulation(client, admin, PRODUCTION, EQUAL)
    rollout = await sim.start(HOLD, [ERRORS_GUARDRAIL])
    await sim.complete(100)
    assert (await sim.check(rollout["id"])) is not None
    # The split's least p-value so far, as the database holds it, set just above the level.
    async with clean_database.begin() as connection:
        await connection.execute(
            text("UPDATE rollouts SET evidence = jsonb_set(evidence, '{srm_p_value}', '0.011') WHERE id = :id"),
            {"id": rollout["id"]},
        )
    # A restart: a new checker (nothing in memory) takes the rollout over once the old one's lease has run out.
    runtime = runtime_of(client.app)
    restarted = RolloutChecker(runtime.sessionmaker, runtime.bus, runtime.prompt_limits, interval=5.0)
    sim.clock.advance(4 * 3600)
    restarted.clock = sim.clock
    await sim.complete(100)
    action = await in_app(client, lambda: restarted.check(rollout["id"]))
    assert action is not None
    evidence = (await sim.rollout(rollout["id"]))["evidence"]
    units = [evidence["units"]["production"], evidence["units"]["candidate"]]
    assert sum(units) == 200
    now, _ = sequential_srm_p_value(units, [0.5, 0.5])
    assert evidence["srm_p_value"] == min(0.011, now)  # the least of the recorded one and this look's
    assert evidence["srm_log_bayes_factor"] == pytest.approx(srm_log_bayes_factor(units, [0.5, 0.5]))
