"""An experiment's winner whose version is archived: only an earlier production version may come back that way.

Only a rollback brings an archived version back, and only one that was in production before (README, Concepts).
A winner whose version was archived while the experiment ran, and never was in production, can never be promoted:
its stop is refused naming the winner, with nothing written, whether the variant ran the version with its own config
(a rollback, refused) or with another one (which would have made a new version of the archived one's content).
Stopping without a winner stays open, and leaves production as it is; the console's stop form says so
(tests/console/test_experiment_stop_refusal.py).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import problem
from tests.experiments.conftest import Client, make_experiment, make_metric, make_prompt, runtime_of

Headers = dict[str, str]
REFUSAL = (
    "version 2 is archived and was never in production, so it cannot be promoted; "
    "stop without a winner to leave production as it is"
)


async def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
async def setup(client: Client, admin: Headers) -> Headers:
    """Prompt 'greet' (version 1 in production, version 2 a draft), a metric 'converted' and config 'fast'."""
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    await ok(await client.post("/v1/configs", json={"name": "fast"}, headers=admin), 201)
    version = {"backend": "vllm", "model": "small-model"}
    await ok(await client.post("/v1/configs/fast/versions", json=version, headers=admin), 201)
    return admin


async def archive(client: Client, headers: Headers, version: int) -> None:
    move = {"to": "archived", "reason": "withdrawn"}
    await ok(await client.post(f"/v1/prompts/greet/versions/{version}/promote", json=move, headers=headers))


async def states(client: Client, headers: Headers) -> dict[int, str]:
    listed = await ok(await client.get("/v1/prompts/greet/versions", headers=headers))
    return {v["version"]: v["state"] for v in listed["items"]}


async def stopped_events(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT type FROM outbox_events WHERE type = 'experiment.stopped'"))
        return list(rows.scalars())


@pytest.mark.parametrize(
    "treatment",
    [
        pytest.param({"key": "treatment", "prompt_version": 2}, id="with-the-versions-own-config"),
        pytest.param(
            {"key": "treatment", "prompt_version": 2, "config": {"name": "fast", "version": 1}},
            id="with-another-config",
        ),
    ],
)
async def test_a_winner_archived_and_never_in_production_is_refused_with_nothing_written(
    client: Client, setup: Headers, clean_database: AsyncEngine, treatment: dict[str, Any]
) -> None:
    variants = [{"key": "control", "prompt_version": 1}, treatment]
    await make_experiment(client, setup, "tone", "greet", variants=variants)
    await archive(client, setup, 2)
    feed = runtime_of(client.app).feed.listen()
    audited = (await ok(await client.get("/v1/audit", headers=setup)))["items"]

    response = await client.post("/v1/experiments/tone/stop", json={"winner": "treatment"}, headers=setup)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    details = problem(response)
    assert details["detail"] == f"variant 'treatment' cannot win: {REFUSAL}"
    assert details["errors"] == [{"field": "winner", "message": REFUSAL}]
    experiment = await ok(await client.get("/v1/experiments/tone", headers=setup))
    assert (experiment["status"], experiment["winner"]) == ("running", None)
    assert await states(client, setup) == {1: "production", 2: "archived"}  # no version 3
    assert (await ok(await client.get("/v1/audit", headers=setup)))["items"] == audited
    assert feed.queue.empty()
    runtime_of(client.app).feed.forget(feed)
    assert await stopped_events(clean_database) == []


async def test_the_experiment_of_a_refused_winner_stops_without_one_and_production_stays(
    client: Client, setup: Headers, clean_database: AsyncEngine
) -> None:
    await make_experiment(client, setup, "tone", "greet")
    await archive(client, setup, 2)
    refused = await client.post("/v1/experiments/tone/stop", json={"winner": "treatment"}, headers=setup)
    assert refused.status_code == 422, refused.text
    feed = runtime_of(client.app).feed.listen()

    stopped = await ok(await client.post("/v1/experiments/tone/stop", json={"reason": "withdrawn"}, headers=setup))

    assert (stopped["experiment"]["status"], stopped["promoted"]) == ("stopped", None)
    assert await states(client, setup) == {1: "production", 2: "archived"}
    change = feed.queue.get_nowait().change
    assert change is not None
    assert (change.kind, change.name, change.action) == ("experiment", "tone", "stopped")
    runtime_of(client.app).feed.forget(feed)
    assert await stopped_events(clean_database) == ["experiment.stopped"]


async def test_a_winner_archived_after_it_was_in_production_returns_to_production(
    client: Client, setup: Headers
) -> None:
    """The way back the README shows: version 1, archived when version 2 took production, wins and is rolled back."""
    await make_experiment(client, setup, "tone", "greet")
    promote = {"to": "production", "expected_current": 1}
    await ok(await client.post("/v1/prompts/greet/versions/2/promote", json=promote, headers=setup))

    stopped = await ok(await client.post("/v1/experiments/tone/stop", json={"winner": "control"}, headers=setup))

    assert stopped["promoted"] == {"prompt": "greet", "version": 1, "created_version": False, "changed": True}
    assert await states(client, setup) == {1: "production", 2: "archived"}
