"""The rules API: admin only, each rule validated as a whole with the field named (problem+json), edited
and deleted with an audit entry; incidents listed newest first."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.alerts.conftest import create_rule, ok, rows
from tests.conftest import KeyFactory, problem
from tests.experiments.conftest import Client, make_prompt

RULES = "/v1/alerts/rules"


async def test_a_rule_is_created_read_listed_changed_and_deleted(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await make_prompt(client, admin, "greet")
    created = await create_rule(
        client,
        admin,
        "greet-slow",
        "latency_p95",
        threshold=800,
        window_seconds=600,
        for_seconds=120,
        resolve_threshold=600,
        scope={"prompt": "greet", "backend": "steady"},
    )
    assert created["scope"] == {"prompt": "greet", "backend": "steady", "key": None}
    assert (created["group_by"], created["min_count"], created["enabled"]) == (None, 10, True)
    assert await ok(await client.get(f"{RULES}/{created['id']}", headers=admin)) == created
    second = await create_rule(client, admin, "spend", "cost_per_hour", threshold=5, group_by="backend")
    listed = await ok(await client.get(RULES, params={"limit": 1}, headers=admin))
    assert [r["name"] for r in listed["items"]] == ["greet-slow"]
    rest = await ok(await client.get(RULES, params={"cursor": listed["next_cursor"]}, headers=admin))
    assert [r["name"] for r in rest["items"]] == ["spend"]
    changed = await ok(
        await client.patch(f"{RULES}/{second['id']}", json={"threshold": 7.5, "group_by": None}, headers=admin)
    )
    assert (changed["threshold"], changed["group_by"], changed["kind"]) == (7.5, None, "cost_per_hour")
    deleted = await client.delete(f"{RULES}/{second['id']}", headers=admin)
    assert deleted.status_code == 204
    assert (
        problem(await client.get(f"{RULES}/{second['id']}", headers=admin))["type"] == "/problems/alert_rule_not_found"
    )
    audit = await rows(clean_database, "SELECT action, resource_name FROM audit_log WHERE resource_type = 'alert_rule'")
    assert audit == [
        ("alert_rule.create", "greet-slow"),
        ("alert_rule.create", "spend"),
        ("alert_rule.update", "spend"),
        ("alert_rule.delete", "spend"),
    ]


INVALID = [
    ("an error rate above 1", {"kind": "error_rate", "threshold": 5}, "threshold"),
    (
        "a budget scoped by backend",
        {"kind": "budget", "threshold": 0.8, "scope": {"backend": "steady"}},
        "scope.backend",
    ),
    ("an unknown backend", {"kind": "error_rate", "threshold": 0.1, "scope": {"backend": "nowhere"}}, "scope.backend"),
    ("an unknown prompt", {"kind": "error_rate", "threshold": 0.1, "scope": {"prompt": "nothing"}}, "scope.prompt"),
    ("an unknown key", {"kind": "budget", "threshold": 0.8, "scope": {"key": "nokey"}}, "scope.key"),
    (
        "a resolve threshold above",
        {"kind": "error_rate", "threshold": 0.1, "resolve_threshold": 0.2},
        "resolve_threshold",
    ),
    ("a breaker grouped by key", {"kind": "breaker_open", "threshold": 1, "group_by": "key"}, "group_by"),
    ("a budget in one series", {"kind": "budget", "threshold": 0.8, "group_by": None}, "group_by"),
    ("a fraction of a rollback", {"kind": "rollout_rolled_back", "threshold": 0.5}, "threshold"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
async def test_an_invalid_rule_is_refused_naming_the_field(
    client: Client, admin: dict[str, str], body: dict[str, Any], field: str, clean_database: AsyncEngine
) -> None:
    response = await client.post(RULES, json={"name": "bad", **body}, headers=admin)
    assert response.status_code == 422
    details = problem(response)
    assert details["type"] == "/problems/validation_error"
    assert [e["field"] for e in details["errors"]] == [field]
    assert await rows(clean_database, "SELECT id FROM alert_rules") == []


SCHEMA_INVALID = [
    ("an unknown kind", {"kind": "disk_full", "threshold": 1}, "kind"),
    ("a window too short", {"kind": "error_rate", "threshold": 0.1, "window_seconds": 5}, "window_seconds"),
    ("a zero threshold", {"kind": "cost_per_hour", "threshold": 0}, "threshold"),
    ("an unknown field", {"kind": "error_rate", "threshold": 0.1, "severity": "page"}, "severity"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in SCHEMA_INVALID], ids=[c[0] for c in SCHEMA_INVALID])
async def test_a_malformed_rule_is_refused_naming_the_field(
    client: Client, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = await client.post(RULES, json={"name": "bad", **body}, headers=admin)
    assert response.status_code == 422
    [error] = problem(response)["errors"]
    assert error["field"] == field or f"`{field}`" in error["message"], error


async def test_a_change_that_makes_a_rule_invalid_is_refused_and_changes_nothing(
    client: Client, admin: dict[str, str]
) -> None:
    rule = await create_rule(client, admin, "errors", "error_rate", threshold=0.1)
    response = await client.patch(
        f"{RULES}/{rule['id']}", json={"threshold": 0.05, "resolve_threshold": 0.2}, headers=admin
    )
    assert response.status_code == 422
    assert [e["field"] for e in problem(response)["errors"]] == ["resolve_threshold"]
    assert (await ok(await client.get(f"{RULES}/{rule['id']}", headers=admin)))["threshold"] == 0.1


async def test_a_second_rule_with_the_same_name_is_a_conflict(client: Client, admin: dict[str, str]) -> None:
    await create_rule(client, admin, "errors", "error_rate", threshold=0.1)
    response = await client.post(RULES, json={"name": "errors", "kind": "error_rate", "threshold": 0.2}, headers=admin)
    assert response.status_code == 409
    assert problem(response)["type"] == "/problems/alert_rule_exists"


async def test_rules_and_incidents_need_admin(client: Client, make_key: KeyFactory) -> None:
    analyst = await make_key(Scope.READ, Scope.ANALYZE, Scope.WRITE, name="analyst")
    body = {"name": "errors", "kind": "error_rate", "threshold": 0.1}
    for response in (
        await client.post(RULES, json=body, headers=analyst),
        await client.get(RULES, headers=analyst),
        await client.get("/v1/alerts/incidents", headers=analyst),
    ):
        assert response.status_code == 403
        assert problem(response)["type"] == "/problems/forbidden"


async def test_webhooks_subscribe_to_alert_events(client: Client, admin: dict[str, str]) -> None:
    for events in (["alert.firing", "alert.resolved"], ["alert.*"]):
        body = {"url": "http://127.0.0.1:9/hook", "events": events}
        await ok(await client.post("/v1/webhooks", json=body, headers=admin), 201)
