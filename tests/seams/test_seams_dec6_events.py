"""What the change events of an experiment's stop say, read beside the stop's own answer."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.conftest import AppClient, problem
from tests.experiments.conftest import make_experiment, make_metric, make_prompt
from tests.experiments.test_cli import cli, served  # noqa: F401 - the app served for the command line
from tests.seams.conftest import ok, rows

Headers = dict[str, str]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"experiment_exposure_flush_seconds": 3600.0, "experiment_statistics_seconds": 3600.0}
    )


async def stopped_event(engine: AsyncEngine, key: str) -> dict[str, Any]:
    found = await rows(
        engine, "SELECT payload FROM outbox_events WHERE type = 'experiment.stopped' AND subject = :key", key=key
    )
    assert len(found) == 1, found
    payload: dict[str, Any] = found[0]["payload"]
    return payload


async def stopped_events(engine: AsyncEngine, key: str) -> int:
    found = await rows(
        engine, "SELECT count(*) AS n FROM outbox_events WHERE type = 'experiment.stopped' AND subject = :key", key=key
    )
    return int(found[0]["n"])


async def test_the_stopped_event_says_whether_the_winner_changed_production_as_the_answer_does(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    """A winner already in production moves nothing: the event says so (``changed``), as the stop's answer does;
    ``promoted_version`` stays the winner's version, as ``promoted.version`` in the answer."""
    await make_prompt(client, admin, "dec6-stop")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "dec6-held", "dec6-stop")
    held = await ok(await client.post("/v1/experiments/dec6-held/stop", json={"winner": "control"}, headers=admin))
    await make_experiment(client, admin, "dec6-moved", "dec6-stop")
    moved = await ok(await client.post("/v1/experiments/dec6-moved/stop", json={"winner": "treatment"}, headers=admin))
    await make_experiment(
        client,
        admin,
        "dec6-none",
        "dec6-stop",
        variants=[{"key": "control", "prompt_version": 2}, {"key": "treatment", "prompt_version": 1}],
    )
    none = await ok(await client.post("/v1/experiments/dec6-none/stop", json={}, headers=admin))

    for key, answer in (("dec6-held", held), ("dec6-moved", moved)):
        event = await stopped_event(clean_database, key)
        promoted = answer["promoted"]
        assert (event["promoted_version"], event["changed"]) == (promoted["version"], promoted["changed"]), key
    assert held["promoted"]["changed"] is False
    assert moved["promoted"]["changed"] is True
    assert none["promoted"] is None
    event = await stopped_event(clean_database, "dec6-none")
    assert (event["promoted_version"], event["changed"]) == (None, False)


async def test_the_command_line_says_a_winner_already_in_production_was_not_promoted(
    client: AppClient,
    admin: Headers,
    served: str,  # noqa: F811 - the command line's app (tests.experiments)
) -> None:
    await make_prompt(client, admin, "dec6-cli")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "dec6-cli-x", "dec6-cli")
    stopped = await cli(served, admin, "experiments", "stop", "dec6-cli-x", "--winner", "control")
    assert stopped.exit_code == 0, stopped.output
    assert "dec6-cli v1 was already in production: nothing was promoted" in stopped.output
    assert "is now in production" not in stopped.output


async def test_a_winner_the_promotion_gate_refuses_is_named_as_the_bad_field_and_nothing_stops(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    """The gate's refusal reached the stop's caller with no field named: the stop's field is ``winner``."""
    await make_prompt(client, admin, "dec6-gated")
    await make_metric(client, admin, "converted")
    await ok(await client.post("/v1/evals/datasets", json={"name": "dec6-cases"}, headers=admin))
    items = {"items": [{"variables": {"x": "a"}}]}
    await ok(await client.post("/v1/evals/datasets/dec6-cases/versions", json=items, headers=admin))
    gate = {"dataset": {"name": "dec6-cases"}, "min_pass_rate": 0.5}  # no run of any version meets it
    await ok(await client.put("/v1/prompts/dec6-gated/gates/production", json=gate, headers=admin))
    await make_experiment(client, admin, "dec6-gated-x", "dec6-gated")

    response = await client.post("/v1/experiments/dec6-gated-x/stop", json={"winner": "treatment"}, headers=admin)
    assert response.status_code == 422, response.text
    body = problem(response)
    assert body["type"] == "/problems/gate_failed"
    assert [e["field"] for e in body["errors"]] == ["winner"]
    assert "no completed evaluation run" in body["errors"][0]["message"]
    experiment = await ok(await client.get("/v1/experiments/dec6-gated-x", headers=admin))
    assert experiment["status"] == "running"
    assert await stopped_events(clean_database, "dec6-gated-x") == 0
