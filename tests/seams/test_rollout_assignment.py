"""A rollout's backing experiment seen by apps that assign locally: the same sides as the service, and no
reported exposures that could move the rollout's split check."""

from __future__ import annotations

import pytest
from prompt_registry_client.assignment import assign_experiment, gb_hash

from registry.auth.keys import Scope
from registry.rollouts.plan import HASH_VERSION, included_in_rollout, rollout_ranges
from tests.conftest import KeyFactory, problem
from tests.experiments.conftest import Client, make_metric, make_prompt, settle
from tests.rollouts.conftest import ok, start_rollout

UNITS = [f"user-{i}" for i in range(150)]


@pytest.mark.parametrize("share", [0.05, 0.25, 0.29, 0.3333, 0.5, 0.123456, 1.0])
def test_the_ranges_give_the_candidate_exactly_to_the_units_the_rollout_includes(share: float) -> None:
    seed = "rollout-0123456789ab"
    production, candidate = rollout_ranges(share)
    for unit in [f"u{i}" for i in range(3000)]:
        bucket = gb_hash(seed, unit, HASH_VERSION)
        assert bucket is not None
        in_candidate = candidate[0] <= bucket < candidate[1]
        assert in_candidate == included_in_rollout(seed, unit, share), (unit, bucket)
        assert in_candidate != (production[0] <= bucket < production[1])


async def test_an_sdk_given_the_experiment_assigns_every_unit_the_side_the_service_routes_it_to(
    client: Client, admin: dict[str, str]
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    rollout = await start_rollout(client, admin, steps=[{"share": 0.25}, {"share": 0.6}, {"share": 1.0}])
    for step in range(2):
        definition = await ok(await client.get(f"/v1/experiments/{rollout['experiment']}", headers=admin))
        variations = definition["assignment"]["variations"]
        served: dict[str, int] = {}
        for unit in UNITS:
            render = {"variables": {"x": "1"}, "unit": unit}
            answer = await ok(await client.post("/v1/prompts/greet/render", json=render, headers=admin))
            local = assign_experiment(definition, unit)
            assert local.in_experiment
            assert variations[local.variation] == answer["experiment"]["variant"], (step, unit)
            served[answer["experiment"]["variant"]] = served.get(answer["experiment"]["variant"], 0) + 1
        assert set(served) == {"production", "candidate"}  # both sides were compared, not one
        await ok(await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=admin))
        await settle(client)


async def test_reported_exposures_of_a_rollout_are_taken_only_on_the_side_it_routes_each_unit_to(
    client: Client, admin: dict[str, str], make_key: KeyFactory
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    rollout = await start_rollout(client, admin, steps=[{"share": 0.5}, {"share": 1.0}])
    key = rollout["experiment"]
    reader = await make_key(Scope.READ, name="app")
    units = [f"local-{i}" for i in range(40)]
    sides = {}
    for unit in units:
        preview = {"unit": unit, "variables": {"x": "1"}}
        sides[unit] = (await ok(await client.post(f"/v1/experiments/{key}/preview", json=preview, headers=admin)))[
            "experiment"
        ]["variant"]
    assert set(sides.values()) == {"production", "candidate"}

    forged = [{"experiment": key, "unit": unit, "variant": "candidate"} for unit in units]
    response = await client.post("/v1/exposures", json={"exposures": forged}, headers=reader)
    assert response.status_code == 422
    refused = {e["field"] for e in problem(response)["errors"]}
    assert refused == {f"exposures[{i}].variant" for i, unit in enumerate(units) if sides[unit] == "production"}
    assert (await client.get(f"/v1/units/{units[0]}", headers=admin)).status_code == 404  # none was recorded

    honest = [{"experiment": key, "unit": unit, "variant": sides[unit]} for unit in units]
    recorded = await ok(await client.post("/v1/exposures", json={"exposures": honest}, headers=reader), 202)
    assert recorded["recorded"] == len(units)
