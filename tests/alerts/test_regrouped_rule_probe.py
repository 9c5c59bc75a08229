"""A rule given a new scope or grouping while it fires: its incident is of a series the rule no longer has."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.alerts.conftest import PROMPT, FakeClock, alert_events, complete, create_rule, evaluate, ok
from tests.completions.conftest import publish, unique
from tests.experiments.conftest import Client


async def test_regrouping_a_firing_rule_resolves_its_incident_as_it_fired_and_the_new_series_fires_anew(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="steady", model=unique("status:500:all"))
    rule = await create_rule(client, admin, "errors", "error_rate", threshold=0.5, min_count=1)
    await complete(client, admin, 1)
    clock = FakeClock()
    clock.advance(1)
    assert await evaluate(client, clock) == {rule["id"]: [("", "fire")]}
    invalid = {"group_by": "prompt", "scope": {"backend": "nowhere"}}
    refused = await client.patch(f"/v1/alerts/rules/{rule['id']}", json=invalid, headers=admin)
    assert refused.status_code == 422
    [incident] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert incident["status"] == "firing"  # a refused change resolves nothing
    await ok(await client.patch(f"/v1/alerts/rules/{rule['id']}", json={"group_by": "prompt"}, headers=admin))
    [incident] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert (incident["subject"], incident["status"], incident["resolution"]) == ("", "resolved", "rule_changed")
    assert await evaluate(client, clock) == {rule["id"]: [(PROMPT, "fire")]}
    assert [t for t, _ in await alert_events(clean_database)] == ["alert.firing", "alert.resolved", "alert.firing"]


async def test_a_change_of_threshold_alone_keeps_the_incident_firing(client: Client, admin: dict[str, str]) -> None:
    await publish(client, admin, backend="steady", model=unique("status:500:all"))
    rule = await create_rule(client, admin, "errors", "error_rate", threshold=0.5, min_count=1)
    await complete(client, admin, 1)
    clock = FakeClock()
    clock.advance(1)
    assert await evaluate(client, clock) == {rule["id"]: [("", "fire")]}
    body = {"threshold": 0.6, "scope": {}, "group_by": None}  # the same scope and grouping, given again
    await ok(await client.patch(f"/v1/alerts/rules/{rule['id']}", json=body, headers=admin))
    [incident] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert incident["status"] == "firing"
    assert await evaluate(client, clock) == {}
