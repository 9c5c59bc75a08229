"""A rollout whose candidate cannot render what callers send production: refused before any unit sees it.

Such a candidate answers every request of its units with 422 variables_invalid, which records no completion,
so no guardrail would see the failures and the rollout would promote it.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.experiments.variables import VersionInputs, production_refusals, variable_conflicts
from tests.conftest import count_rows, problem
from tests.experiments.conftest import Client, make_metric
from tests.rollouts.conftest import STEPS, ok

OPEN = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


async def prompt_with(client: Client, admin: dict[str, str], *versions: dict[str, Any]) -> None:
    await ok(await client.post("/v1/prompts", json={"name": "greet"}, headers=admin), 201)
    for version in versions:
        await ok(await client.post("/v1/prompts/greet/versions", json={"kind": "text", **version}, headers=admin), 201)
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post("/v1/prompts/greet/versions/1/promote", json=promote, headers=admin))
    await make_metric(client, admin, "converted")


async def test_a_candidate_needing_a_variable_production_refuses_is_refused(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await prompt_with(
        client, admin, {"template": "Hello {{ name }}"}, {"template": "Hello {{ name }}, in a {{ tone }} tone"}
    )
    body = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}]}
    response = await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin)
    assert response.status_code == 422
    errors = problem(response)["errors"]
    assert [e["field"] for e in errors] == ["candidate_version"]
    assert "requires variable 'tone'" in errors[0]["message"]
    assert await count_rows(clean_database, "rollouts") == 0
    assert await count_rows(clean_database, "experiments") == 0
    rendered = await client.post(
        "/v1/prompts/greet/render", json={"variables": {"name": "Ada"}, "unit": "user-1"}, headers=admin
    )
    assert (await ok(rendered))["version"] == 1


async def test_a_candidate_whose_schema_takes_what_production_is_sent_may_roll_out(
    client: Client, admin: dict[str, str]
) -> None:
    optional = {"type": "object", "properties": {"name": {"type": "string"}, "tone": {"type": "string"}}}
    await prompt_with(
        client,
        admin,
        {"template": "Hello {{ name }}", "input_schema": OPEN},
        {"template": "Hello {{ name }}{% if tone %}, {{ tone }}{% endif %}", "input_schema": optional},
    )
    body = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}]}
    await ok(await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin), 201)


@pytest.mark.parametrize(
    ("production", "candidate", "conflicts"),
    [
        ({"properties": {"a": {}}, "required": ["a"], "additionalProperties": False}, {"properties": {"a": {}}}, 0),
        # The candidate drops a variable production requires and refuses what it does not name.
        ({"properties": {"a": {}}, "required": ["a"]}, {"properties": {"b": {}}, "additionalProperties": False}, 1),
        # The candidate requires one production refuses, and refuses one production requires.
        (
            {"properties": {"a": {}}, "required": ["a"], "additionalProperties": False},
            {"properties": {"b": {}}, "required": ["b"], "additionalProperties": False},
            2,
        ),
        # Production takes anything: callers may already send what the candidate requires.
        ({"properties": {"a": {}}}, {"properties": {"b": {}}, "required": ["b"]}, 0),
    ],
)
def test_conflicts_are_what_no_request_can_satisfy_on_both_sides(
    production: dict[str, Any], candidate: dict[str, Any], conflicts: int
) -> None:
    assert len(variable_conflicts(production, candidate)) == conflicts


def test_a_candidate_is_refused_for_each_variable_conflict_then_for_its_kind() -> None:
    production = VersionInputs(3, "chat", {"properties": {"a": {}}, "required": ["a"], "additionalProperties": False})
    candidate = VersionInputs(4, "text", {"properties": {"b": {}}, "required": ["b"], "additionalProperties": False})
    assert production_refusals(production, candidate) == [
        "requires variable 'b', which production refuses (production: version 3)",
        "refuses variable 'a', which production requires (production: version 3)",
        "is a text version and production (version 3) a chat one: requests that production's callers send would be "
        "refused on it",
    ]
    assert production_refusals(production, VersionInputs(4, "chat", {"properties": {"a": {}, "b": {}}})) == []


async def test_an_experiment_with_a_variant_production_callers_cannot_render_does_not_start(
    client: Client, admin: dict[str, str]
) -> None:
    await prompt_with(client, admin, {"template": "Hello {{ name }}"}, {"template": "Hello {{ person }}"})
    experiment = {
        "key": "tone",
        "prompt": "greet",
        "variants": [{"key": "a", "prompt_version": 1}, {"key": "b", "prompt_version": 2}],
        "primary_metric": "converted",
    }
    await ok(await client.post("/v1/experiments", json=experiment, headers=admin), 201)
    response = await client.post("/v1/experiments/tone/start", headers=admin)
    assert response.status_code == 422
    messages = {(e["field"], e["message"].split(" (")[0]) for e in problem(response)["errors"]}
    assert messages == {
        ("variants[1].prompt_version", "requires variable 'person', which production refuses"),
        ("variants[1].prompt_version", "refuses variable 'name', which production requires"),
    }
    assert (await ok(await client.get("/v1/experiments/tone", headers=admin)))["status"] == "draft"
