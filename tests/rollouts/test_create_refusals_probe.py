"""What a new rollout's body gets wrong is refused naming the rollout's own field."""

from __future__ import annotations

import pytest

from tests.conftest import problem
from tests.experiments.conftest import Client, make_metric, make_prompt
from tests.rollouts.conftest import STEPS, ok


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    """Prompt 'greet' (version 1 in production, version 2 the candidate) and a metric 'converted'."""
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    return admin


async def test_a_guardrail_on_an_unknown_metric_is_refused_naming_the_guardrail(
    client: Client, setup: dict[str, str]
) -> None:
    body = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}, {"metric": "revenue"}]}
    response = await client.post("/v1/prompts/greet/rollouts", json=body, headers=setup)
    assert response.status_code == 422
    refused = problem(response)
    assert refused["errors"] == [{"field": "guardrails[1].metric", "message": "no metric is named 'revenue'"}]
    assert (await ok(await client.get("/v1/prompts/greet/rollouts", headers=setup)))["items"] == []
