"""The version a winner's stop would promote, as predicted for the console's stop form (the gate is judged on it),
is the version the stop then promotes.

A winner that ran its version with another config gets a version carrying that config: the newest version when its
content is identical, as version creation decides it (by the content's digest), else a new one. The prediction used
to compare the fields as Python values, under which a number in the input schema equals its float spelling (0 and
0.0) while their digests differ: it named the newest version where the stop created a new one.
"""

from __future__ import annotations

from typing import Any

import pytest

from registry.auth.principal import Actor
from registry.experiments.schemas import StopExperiment
from registry.experiments.service import ExperimentService
from registry.lib.errors import InvalidInputError
from registry.prompts.service import PromptLimits
from registry.runtime import Runtime
from tests.experiments.conftest import Client, make_experiment, make_metric

Headers = dict[str, str]
TEMPLATE = "hello {{ x }}"
SCHEMA = {"properties": {"x": {"type": "number", "minimum": 0}}}
ALICE = Actor("alice")


async def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def prompt_with_a_newest_version(client: Client, headers: Headers, name: str, newest: dict[str, Any]) -> None:
    """Version 1: ``TEMPLATE`` with ``SCHEMA`` and no config, in production; version 2: ``newest``."""
    await ok(await client.post("/v1/prompts", json={"name": name}, headers=headers), 201)
    first = {"kind": "text", "template": TEMPLATE, "input_schema": SCHEMA}
    for body in (first, newest):
        await ok(await client.post(f"/v1/prompts/{name}/versions", json=body, headers=headers), 201)
    production = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/prompts/{name}/versions/1/promote", json=production, headers=headers))


@pytest.mark.parametrize(
    ("newest", "promoted"),
    [
        pytest.param({"input_schema": SCHEMA, "config": 2}, (2, False), id="the-newest-is-identical"),
        pytest.param({"input_schema": SCHEMA, "config": 1}, (3, True), id="the-newest-has-another-config"),
        pytest.param(
            {"input_schema": {"properties": {"x": {"type": "number", "minimum": 0.0}}}, "config": 2},
            (3, True),
            id="the-newest-spells-a-number-as-a-float",
        ),
    ],
)
async def test_the_predicted_winning_version_is_the_one_the_stop_promotes(
    client: Client, admin: Headers, newest: dict[str, Any], promoted: tuple[int, bool]
) -> None:
    prompt, key = "predicted-winner", "predicted-winner"
    await ok(await client.post("/v1/configs", json={"name": "fast"}, headers=admin), 201)
    for model in ("small-model", "large-model"):
        config = {"backend": "vllm", "model": model}
        await ok(await client.post("/v1/configs/fast/versions", json=config, headers=admin), 201)
    body = {"kind": "text", "template": TEMPLATE, "input_schema": newest["input_schema"]}
    await prompt_with_a_newest_version(
        client, admin, prompt, {**body, "config": {"name": "fast", "version": newest["config"]}}
    )
    await make_metric(client, admin, "converted")
    treatment = {"key": "treatment", "prompt_version": 1, "config": {"name": "fast", "version": 2}}
    await make_experiment(client, admin, key, prompt, variants=[{"key": "control", "prompt_version": 1}, treatment])
    runtime: Runtime = client.app.state.runtime
    async with runtime.sessionmaker() as session:
        service = ExperimentService(session, runtime.prompt_limits)
        experiment = await service.require(key)
        winner = next(v for v in experiment.variants if v.key == "treatment")
        predicted = await service._winning_version(experiment, winner)
        prediction = (predicted.number, predicted.id is None)

    stopped = await ok(await client.post(f"/v1/experiments/{key}/stop", json={"winner": "treatment"}, headers=admin))

    done = stopped["promoted"]
    assert (done["version"], done["created_version"]) == promoted
    assert prediction == promoted


async def test_a_winner_whose_new_version_would_be_refused_is_refused_on_the_form_as_by_the_stop(
    client: Client, admin: Headers
) -> None:
    """Under a template limit lowered since its version was stored, the version a win would create is refused: the
    form names the refusal rather than failing, and the stop refuses it with the same words."""
    prompt, key = "refused-winner", "refused-winner"
    await ok(await client.post("/v1/configs", json={"name": "fast"}, headers=admin), 201)
    for model in ("small-model", "large-model"):
        config = {"backend": "vllm", "model": model}
        await ok(await client.post("/v1/configs/fast/versions", json=config, headers=admin), 201)
    newest = {"kind": "text", "template": TEMPLATE, "input_schema": SCHEMA, "config": {"name": "fast", "version": 1}}
    await prompt_with_a_newest_version(client, admin, prompt, newest)
    await make_metric(client, admin, "converted")
    treatment = {"key": "treatment", "prompt_version": 1, "config": {"name": "fast", "version": 2}}
    await make_experiment(client, admin, key, prompt, variants=[{"key": "control", "prompt_version": 1}, treatment])
    runtime: Runtime = client.app.state.runtime
    lowered = PromptLimits(max_template_chars=len(TEMPLATE) - 1)

    async with runtime.sessionmaker() as session:
        service = ExperimentService(session, lowered)
        experiment = await service.require(key)
        refusals = await service.winner_refusals(experiment, await service.production_version(experiment), ALICE)
        with pytest.raises(InvalidInputError) as stop:
            await service.stop(key, StopExperiment(winner="treatment"), ALICE)

    assert refusals == {"treatment": "the prompt version is invalid"}
    assert stop.value.detail == refusals["treatment"]
    shown = await ok(await client.get(f"/v1/experiments/{key}", headers=admin))
    assert (shown["status"], shown["winner"]) == ("running", None)
    versions = await ok(await client.get(f"/v1/prompts/{prompt}/versions", headers=admin))
    assert [v["version"] for v in versions["items"]] == [2, 1]
