"""Alerts end to end against the stand-in backend, the evaluator on a fake clock: an error-rate rule fires
once (one webhook event, one audit entry), stays quiet while firing and resolves when its window is clean;
a budget at 80% and 100%; an open breaker; a rollout rolled back; one evaluator per rule across replicas."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.alerts.evaluator import AlertEvaluator
from registry.auth.keys import Scope
from registry.db.session import unit_of_work
from registry.rollouts.service import CHECKER, RolloutService
from tests.alerts.conftest import (
    PROMPT,
    FakeClock,
    alert_audit,
    alert_events,
    complete,
    create_rule,
    evaluate,
    ok,
    rows,
)
from tests.completions.conftest import publish, unique
from tests.conftest import KeyFactory
from tests.experiments.conftest import Client, make_metric, make_prompt, runtime_of
from tests.rollouts.conftest import start_rollout


async def test_an_error_rate_rule_fires_once_and_resolves_when_its_window_is_clean(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="steady", model=unique("status:500:all"))
    hook = {"url": "http://127.0.0.1:9/alerts", "events": ["alert.*"]}
    await ok(await client.post("/v1/webhooks", json=hook, headers=admin), 201)
    other = {"url": "http://127.0.0.1:9/prompts", "events": ["prompt.*"]}
    await ok(await client.post("/v1/webhooks", json=other, headers=admin), 201)
    dispatcher = runtime_of(client.app).webhooks
    await dispatcher.fan_out()  # the prompt's own events out of the way
    rule = await create_rule(
        client, admin, "greet-errors", "error_rate", threshold=0.05, window_seconds=300, scope={"prompt": PROMPT}
    )
    assert await complete(client, admin, 9) == [502] * 9
    clock = FakeClock()
    assert await evaluate(client, clock) == {}  # 9 completions: fewer than the 10 a rate needs
    assert await complete(client, admin, 1) == [502]
    clock.advance(1)
    assert await evaluate(client, clock) == {rule["id"]: [("", "fire")]}
    for _ in range(3):  # still failing: no second firing, no second event
        assert await complete(client, admin, 2) == [502, 502]
        clock.advance(30)
        assert await evaluate(client, clock) == {}
    assert await alert_events(clean_database) == [("alert.firing", "greet-errors")]
    assert await alert_audit(clean_database) == [("alert.firing", "greet-errors")]
    assert await dispatcher.fan_out() == 1  # one delivery, to the webhook subscribed to alerts
    [firing] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert (firing["status"], firing["value"], firing["threshold"], firing["rule"]) == (
        "firing",
        1.0,
        0.05,
        "greet-errors",
    )
    assert firing["resolved_at"] is None
    clock.advance(301)  # every completion is out of the window
    assert await evaluate(client, clock) == {rule["id"]: [("", "resolve")]}
    assert await evaluate(client, clock) == {}
    [resolved] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert (resolved["id"], resolved["status"], resolved["resolution"]) == (firing["id"], "resolved", "cleared")
    assert resolved["started_at"] < resolved["resolved_at"]
    assert await alert_events(clean_database) == [("alert.firing", "greet-errors"), ("alert.resolved", "greet-errors")]
    assert await alert_audit(clean_database) == [("alert.firing", "greet-errors"), ("alert.resolved", "greet-errors")]
    assert await dispatcher.fan_out() == 1
    deliveries = await rows(
        clean_database, "SELECT event_type, body FROM webhook_deliveries WHERE event_type LIKE 'alert.%' ORDER BY id"
    )
    assert [t for t, _ in deliveries] == ["alert.firing", "alert.resolved"]
    assert deliveries[0][1]["data"]["status"] == "firing"
    assert deliveries[1][1]["data"]["resolved_at"] is not None
    [(payload,)] = await rows(clean_database, "SELECT payload FROM outbox_events WHERE type = 'alert.resolved'")
    assert payload["incident_id"] == firing["id"]
    assert (payload["value"], payload["threshold"], payload["kind"]) == (1.0, 0.05, "error_rate")


async def test_a_healthy_prompt_does_not_fire_and_a_rule_waits_its_for_duration(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="steady", model=unique("status:500:4"))  # 4 failures, then answers
    rule = await create_rule(client, admin, "slow-to-fire", "error_rate", threshold=0.3, for_seconds=60, min_count=4)
    assert await complete(client, admin, 4) == [502] * 4
    clock = FakeClock()
    clock.advance(1)
    assert await evaluate(client, clock) == {}  # pending
    clock.advance(60)
    assert await evaluate(client, clock) == {rule["id"]: [("", "fire")]}
    assert await complete(client, admin, 20) == [200] * 20  # 4 of 24 failed: below 0.3
    clock.advance(1)
    assert await evaluate(client, clock) == {rule["id"]: [("", "resolve")]}
    assert [t for t, _ in await alert_events(clean_database)] == ["alert.firing", "alert.resolved"]


async def test_a_budget_rule_fires_at_80_and_at_100_percent(
    client: Client, admin: dict[str, str], make_key: KeyFactory, clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="steady", model=unique("ok"))
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await ok(await client.get("/v1/keys/", headers=admin)))["items"][-1]["id"]
    near = await create_rule(client, admin, "budget-80", "budget", threshold=0.8)
    spent = await create_rule(client, admin, "budget-100", "budget", threshold=1.0)
    assert await complete(client, app_key, 1) == [200]
    await runtime_of(client.app).completions.recorder.flush()
    per_completion = (await ok(await client.get(f"/v1/keys/{key_id}/budget", headers=admin)))["used_tokens"]
    budget = {"monthly_tokens": 5 * per_completion}
    await ok(await client.put(f"/v1/keys/{key_id}/budget", json=budget, headers=admin))
    clock = FakeClock()
    assert await evaluate(client, clock) == {}  # 20%
    assert await complete(client, app_key, 3) == [200] * 3
    clock.advance(30)
    assert await evaluate(client, clock) == {near["id"]: [(key_id, "fire")]}  # 80%
    assert await complete(client, app_key, 1) == [200]
    clock.advance(30)
    assert await evaluate(client, clock) == {spent["id"]: [(key_id, "fire")]}  # 100%: the 80% one fires on
    assert await alert_events(clean_database) == [("alert.firing", "budget-80"), ("alert.firing", "budget-100")]
    incidents = (await ok(await client.get("/v1/alerts/incidents?status=firing", headers=admin)))["items"]
    assert [(i["rule"], i["subject"], i["value"]) for i in incidents] == [
        ("budget-100", key_id, 1.0),
        ("budget-80", key_id, 0.8),
    ]
    # A larger budget clears both; a revoked key's budget is not watched.
    await ok(
        await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 100 * per_completion}, headers=admin)
    )
    clock.advance(30)
    assert await evaluate(client, clock) == {near["id"]: [(key_id, "resolve")], spent["id"]: [(key_id, "resolve")]}
    await ok(await client.put(f"/v1/keys/{key_id}/budget", json=budget, headers=admin))
    assert (await client.delete(f"/v1/keys/{key_id}", headers=admin)).status_code in (200, 204)
    clock.advance(30)
    assert await evaluate(client, clock) == {}


async def test_an_open_breaker_fires_for_its_backend(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="fragile", model=unique("status:500:all"))
    rule = await create_rule(client, admin, "breakers", "breaker_open", threshold=1, window_seconds=60)
    assert rule["group_by"] == "backend"
    assert await complete(client, admin, 3) == [502] * 3  # the third failure opens the breaker
    clock = FakeClock()
    assert await evaluate(client, clock) == {}
    assert await complete(client, admin, 2) == [503, 503]  # refused by the open breaker
    clock.advance(1)
    assert await evaluate(client, clock) == {rule["id"]: [("fragile", "fire")]}
    [incident] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert (incident["subject"], incident["value"]) == ("fragile", 2.0)
    clock.advance(61)
    assert await evaluate(client, clock) == {rule["id"]: [("fragile", "resolve")]}


async def test_a_rollout_rolled_back_fires_for_its_prompt(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await make_prompt(client, admin, PROMPT)
    await make_metric(client, admin, "converted")
    rule = await create_rule(client, admin, "rollbacks", "rollout_rolled_back", threshold=1, window_seconds=900)
    rollout = await start_rollout(client, admin)
    clock = FakeClock()
    assert await evaluate(client, clock) == {}
    runtime = runtime_of(client.app)
    async with unit_of_work(runtime.sessionmaker, runtime.bus) as session:  # the checker's rollback
        service = RolloutService(session, runtime.prompt_limits)
        await service._end(await service.require(rollout["id"], for_update=True), "rolled_back", "worse", CHECKER)
    clock.advance(1)
    assert await evaluate(client, clock) == {rule["id"]: [(PROMPT, "fire")]}
    clock.advance(901)
    assert await evaluate(client, clock) == {rule["id"]: [(PROMPT, "resolve")]}
    assert await alert_events(clean_database) == [("alert.firing", "rollbacks"), ("alert.resolved", "rollbacks")]


async def test_disabling_or_deleting_a_firing_rule_resolves_its_incident(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="steady", model=unique("status:500:all"))
    rule = await create_rule(client, admin, "errors", "error_rate", threshold=0.5, min_count=1)
    await complete(client, admin, 1)
    clock = FakeClock()
    clock.advance(1)
    assert await evaluate(client, clock) == {rule["id"]: [("", "fire")]}
    disabled = await ok(await client.patch(f"/v1/alerts/rules/{rule['id']}", json={"enabled": False}, headers=admin))
    assert disabled["enabled"] is False
    [incident] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert (incident["status"], incident["resolution"]) == ("resolved", "rule_disabled")
    assert await evaluate(client, clock) == {}  # a disabled rule is not evaluated
    assert [t for t, _ in await alert_events(clean_database)] == ["alert.firing", "alert.resolved"]
    await ok(await client.patch(f"/v1/alerts/rules/{rule['id']}", json={"enabled": True}, headers=admin))
    assert await evaluate(client, clock) == {rule["id"]: [("", "fire")]}
    assert (await client.delete(f"/v1/alerts/rules/{rule['id']}", headers=admin)).status_code == 204
    second, first = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert (second["status"], second["resolution"], second["rule_id"], second["rule"]) == (
        "resolved",
        "rule_deleted",
        None,
        "errors",
    )
    assert first["id"] == incident["id"]  # incidents outlive their rule
    assert [t for t, _ in await alert_events(clean_database)] == ["alert.firing", "alert.resolved"] * 2
    assert await alert_audit(clean_database) == [(t, "errors") for t in ("alert.firing", "alert.resolved") * 2]


async def test_one_evaluator_acts_on_a_rule_at_a_time(client: Client, admin: dict[str, str]) -> None:
    await publish(client, admin, backend="steady", model=unique("ok"))
    rule = await create_rule(client, admin, "errors", "error_rate", threshold=0.5)
    runtime = runtime_of(client.app)
    clock = FakeClock()
    first, second = (
        AlertEvaluator(runtime.sessionmaker, runtime.bus, ["steady"], interval=10.0, clock=clock) for _ in range(2)
    )
    assert await first.evaluate(rule["id"]) == []
    assert await second.evaluate(rule["id"]) is None  # the first holds the lease
    assert await second.run_once() == {}
    clock.advance(29)
    assert await first.evaluate(rule["id"]) == []  # and renews it
    clock.advance(29)
    assert await second.evaluate(rule["id"]) is None
    clock.advance(31)  # the first stopped renewing: its lease expired
    assert await second.evaluate(rule["id"]) == []
    assert await first.evaluate(rule["id"]) is None
