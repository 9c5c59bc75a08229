"""A rollout and an experiment on one prompt: never both at once, whichever comes first."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import count_rows, problem
from tests.experiments.conftest import Client, make_experiment, make_metric, make_prompt
from tests.rollouts.conftest import STEPS


async def test_a_rollout_cannot_start_while_an_experiment_runs_on_the_prompt(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "tone", "greet")
    body = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}]}
    response = await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin)
    assert response.status_code == 409
    assert "experiment 'tone' is already running" in problem(response)["detail"]
    # Nothing half-made: no rollout, and no backing experiment left behind as a draft.
    assert await count_rows(clean_database, "rollouts") == 0
    assert await count_rows(clean_database, "experiments") == 1
    render = {"variables": {"x": "1"}, "unit": "user-1"}
    routed = (await client.post("/v1/prompts/greet/render", json=render, headers=admin)).json()
    assert routed["experiment"]["key"] == "tone"
