"""A retired config version takes no traffic: rollouts, experiments and promotions naming one are refused (409).

A config version is retired when someone promotes it to ``archived``. Yet a rollout's config, an experiment variant's
config and the config of a prompt version promoted to staging or production could all be retired ones, so traffic went
to a config taken out of use. Each is now refused with one problem (``/problems/config_version_archived``, 409: the
request is valid, the config's state forbids it) naming the config and version, through the one check of the configs
domain. A version archived because a newer one took its state (displaced) is superseded, not retired: the prompt
versions pinned to it stay promotable, as the config itself may be rolled back to it.

Config ``cfg``: version 1 was production and was displaced by version 2, version 3 was retired, version 4 is a draft.
Prompt ``greet``: version 1 (with cfg@2) in production, version 2 with cfg@3, version 3 with cfg@4, version 4 with
cfg@1.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import problem
from tests.experiments.conftest import Client, make_metric
from tests.seams.conftest import ok

ARCHIVED = "/problems/config_version_archived"


async def promote(
    client: Client, headers: dict[str, str], path: str, to: str, current: int | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"to": to, "expected_current": current} if to != "archived" else {"to": to}
    return await client.post(f"{path}/promote", json=body, headers=headers)


@pytest.fixture
async def setup(client: Client, admin: dict[str, str]) -> dict[str, str]:
    await ok(await client.post("/v1/configs", json={"name": "cfg"}, headers=admin))
    for model in ("m1", "m2", "m3", "m4"):
        body = {"backend": "openai", "model": model}
        await ok(await client.post("/v1/configs/cfg/versions", json=body, headers=admin))
    await ok(await promote(client, admin, "/v1/configs/cfg/versions/1", "production"))
    await ok(await promote(client, admin, "/v1/configs/cfg/versions/2", "production", 1))  # 1 displaced: superseded
    await ok(await promote(client, admin, "/v1/configs/cfg/versions/3", "archived"))  # retired
    await ok(await client.post("/v1/prompts", json={"name": "greet"}, headers=admin))
    for config in (2, 3, 4, 1):
        version = {"kind": "text", "template": "hi {{ x }}", "config": {"name": "cfg", "version": config}}
        await ok(await client.post("/v1/prompts/greet/versions", json=version, headers=admin))
    await ok(await promote(client, admin, "/v1/prompts/greet/versions/1", "production"))
    await make_metric(client, admin, "converted")
    return admin


def refused(response: httpx.Response, field: str, version: int = 3) -> str:
    """The problem's detail, after checking it is the archived config's, naming ``cfg`` and ``version``."""
    assert response.status_code == 409, response.text
    body = problem(response)
    assert body["type"] == ARCHIVED
    assert (body["config"], body["config_version"]) == ("cfg", version)
    assert f"config 'cfg' version {version} is archived" in body["detail"]
    assert body["errors"] == [{"field": field, "message": f"config 'cfg' version {version} is archived"}]
    return str(body["detail"])


async def state_of(client: Client, headers: dict[str, str], path: str) -> str:
    return str((await ok(await client.get(path, headers=headers)))["state"])


# -- promotions


@pytest.mark.parametrize("to", ["staging", "production"])
async def test_a_prompt_version_on_a_retired_config_is_refused_promotion(
    client: Client, setup: dict[str, str], to: str
) -> None:
    response = await promote(client, setup, "/v1/prompts/greet/versions/2", to, 1 if to == "production" else None)
    assert "prompt 'greet' version 2" in refused(response, "config")
    assert await state_of(client, setup, "/v1/prompts/greet/versions/2") == "draft"
    production = await ok(await client.get("/v1/prompts/greet", params={"label": "production"}, headers=setup))
    assert production["version"]["version"] == 1


async def test_a_config_retired_later_refuses_its_versions_that_may_still_be_archived(
    client: Client, setup: dict[str, str]
) -> None:
    await ok(await promote(client, setup, "/v1/configs/cfg/versions/4", "archived"))
    refused(await promote(client, setup, "/v1/prompts/greet/versions/3", "staging"), "config", 4)
    await ok(await promote(client, setup, "/v1/prompts/greet/versions/3", "archived"))  # taking it out of use is fine


async def test_a_version_on_a_superseded_config_is_still_promoted(client: Client, setup: dict[str, str]) -> None:
    """cfg@1 is archived only because cfg@2 took production from it: nobody retired it."""
    await ok(await promote(client, setup, "/v1/prompts/greet/versions/4", "staging"))
    assert await state_of(client, setup, "/v1/prompts/greet/versions/4") == "staging"


# -- rollouts


async def rollouts_and_experiments(client: Client, headers: dict[str, str]) -> tuple[int, int]:
    rollouts = await ok(await client.get("/v1/prompts/greet/rollouts", headers=headers))
    experiments = await ok(await client.get("/v1/experiments", headers=headers))
    return len(rollouts["items"]), len(experiments["items"])


async def test_a_rollout_naming_a_retired_config_is_refused_and_writes_nothing(
    client: Client, setup: dict[str, str]
) -> None:
    body = {
        "candidate_version": 1,
        "config": {"name": "cfg", "version": 3},
        "steps": [{"share": 0.5}, {"share": 1.0}],
        "guardrails": [{"metric": "converted"}],
    }
    response = await client.post("/v1/prompts/greet/rollouts", json=body, headers=setup)
    assert "rollout of prompt 'greet'" in refused(response, "config")
    assert await rollouts_and_experiments(client, setup) == (0, 0)


async def test_a_rollout_of_a_candidate_whose_own_config_is_retired_is_refused(
    client: Client, setup: dict[str, str]
) -> None:
    """The rollout's end promotes the candidate with its config: refused at the start, not after taking traffic."""
    body = {"candidate_version": 2, "steps": [{"share": 0.5}, {"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    refused(await client.post("/v1/prompts/greet/rollouts", json=body, headers=setup), "candidate_version")
    assert await rollouts_and_experiments(client, setup) == (0, 0)
    await ok(await client.post("/v1/prompts/greet/rollouts", json={**body, "candidate_version": 3}, headers=setup))


async def test_a_rollout_whose_config_is_retired_meanwhile_pauses_at_its_end_saying_why(
    client: Client, setup: dict[str, str]
) -> None:
    body = {"candidate_version": 3, "steps": [{"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    rollout = await ok(await client.post("/v1/prompts/greet/rollouts", json=body, headers=setup))
    await ok(await promote(client, setup, "/v1/configs/cfg/versions/4", "archived"))
    moved = await ok(await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=setup))
    assert moved["status"] == "paused"
    assert "config 'cfg' version 4 is archived" in moved["reason"]
    production = await ok(await client.get("/v1/prompts/greet", params={"label": "production"}, headers=setup))
    assert production["version"]["version"] == 1


# -- experiments


def experiment(key: str, config: int) -> dict[str, Any]:
    return {
        "key": key,
        "prompt": "greet",
        "variants": [
            {"key": "control", "prompt_version": 1},
            {"key": "treatment", "prompt_version": 1, "config": {"name": "cfg", "version": config}},
        ],
        "primary_metric": "converted",
    }


async def test_an_experiment_with_a_variant_on_a_retired_config_is_refused_and_not_created(
    client: Client, setup: dict[str, str]
) -> None:
    response = await client.post("/v1/experiments", json=experiment("exp", 3), headers=setup)
    assert "experiment 'exp'" in refused(response, "variants[1].config")
    assert (await client.get("/v1/experiments/exp", headers=setup)).status_code == 404
    await ok(await client.post("/v1/experiments", json=experiment("exp", 1), headers=setup))  # superseded: runs


async def test_a_draft_cannot_take_a_retired_config_nor_start_on_one_retired_since(
    client: Client, setup: dict[str, str]
) -> None:
    await ok(await client.post("/v1/experiments", json=experiment("exp", 4), headers=setup))
    variants = experiment("exp", 3)["variants"]
    response = await client.patch("/v1/experiments/exp", json={"variants": variants}, headers=setup)
    refused(response, "variants[1].config")
    await ok(await promote(client, setup, "/v1/configs/cfg/versions/4", "archived"))
    refused(await client.post("/v1/experiments/exp/start", headers=setup), "variants[1].config", 4)
    shown = await ok(await client.get("/v1/experiments/exp", headers=setup))
    assert shown["status"] == "draft"
    assert (shown["variants"][1]["config"]["name"], shown["variants"][1]["config"]["version"]) == ("cfg", 4)
