"""Experiments over HTTP: definitions, validation, scopes, lifecycle, routing, phases, namespaces, forcing, winners."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.settings import Settings
from tests.conftest import KeyFactory, count_rows, problem, serve_in_process
from tests.experiments.conftest import (
    Client,
    experiment_body,
    flush_and_aggregate,
    make_experiment,
    make_metric,
    make_prompt,
    runtime_of,
    settle,
    until_running_here,
)
from tests.statements import statements_of_this_block


async def render(client: Client, headers: dict[str, str], unit: str | None, prompt: str = "greet", **extra: Any) -> Any:
    body: dict[str, Any] = {"variables": {"x": "hi"}, **extra}
    if unit is not None:
        body["unit"] = unit
    response = await client.post(f"/v1/prompts/{prompt}/render", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_created_experiment_is_a_draft_with_a_growthbook_definition(
    client: Client, setup: dict[str, str]
) -> None:
    body = await make_experiment(
        client,
        setup,
        "greet-test",
        "greet",
        start=False,
        variants=[
            {"key": "control", "prompt_version": 1, "weight": 3},
            {"key": "treatment", "prompt_version": 2, "weight": 1},
        ],
        coverage=0.5,
        namespace={"name": "checkout", "start": 0, "end": 0.5},
    )
    assert body["status"] == "draft"
    assert body["phase"] == 0
    assert body["hash_seed"] == "greet-test"
    assert [v["weight"] for v in body["variants"]] == [0.75, 0.25]
    assert body["assignment"] == {
        "key": "greet-test",
        "variations": ["control", "treatment"],
        "seed": "greet-test",
        "hashVersion": 2,
        "hashAttribute": "id",
        "weights": [0.75, 0.25],
        "coverage": 0.5,
        "namespace": ["checkout", 0, 0.5],
        "phase": "0",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": "nope"}, "prompt"),
        (
            {"variants": [{"key": "a", "prompt_version": 1}, {"key": "b", "prompt_version": 9}]},
            "variants[1].prompt_version",
        ),
        ({"variants": [{"key": "a", "prompt_version": 1}, {"key": "a", "prompt_version": 2}]}, "variants"),
        ({"primary_metric": "unknown"}, "metrics"),
        ({"forced_variants": {"qa-1": "nope"}}, "forced_variants.qa-1"),
        ({"namespace": {"name": "ns", "start": 0.5, "end": 0.5}}, "namespace"),
        ({"coverage": 1.5}, "coverage"),
        ({"variants": [{"key": "only", "prompt_version": 1}]}, "variants"),
        (
            {
                "variants": [
                    {"key": "a", "prompt_version": 1, "config": {"name": "missing"}},
                    {"key": "b", "prompt_version": 2},
                ]
            },
            "variants[0].config",
        ),
    ],
    ids=[
        "unknown prompt",
        "missing version",
        "duplicate variant keys",
        "unknown metric",
        "forced to an unknown variant",
        "empty namespace range",
        "coverage above 1",
        "a single variant",
        "unknown config",
    ],
)
async def test_invalid_experiment_is_refused_and_nothing_written(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine, change: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/experiments", json={**experiment_body("bad", "greet"), **change}, headers=setup)
    assert response.status_code == 422
    body = problem(response)
    assert field in [e["field"] for e in body["errors"]], body
    assert await count_rows(clean_database, "experiments") == 0


async def test_duplicate_key_is_a_conflict(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet", start=False)
    response = await client.post("/v1/experiments", json=experiment_body("greet-test", "greet"), headers=setup)
    assert response.status_code == 409
    assert problem(response)["type"] == "/problems/experiment_exists"


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("post", "/v1/experiments", Scope.READ),
        ("patch", "/v1/experiments/greet-test", Scope.READ),
        ("post", "/v1/experiments/greet-test/start", Scope.WRITE),
        ("post", "/v1/experiments/greet-test/stop", Scope.WRITE),
        ("get", "/v1/experiments/greet-test/results", Scope.READ),
        ("get", "/v1/experiments/greet-test/export", Scope.WRITE),
        ("post", "/v1/metrics", Scope.READ),
        ("get", "/v1/units/u1", Scope.READ),
        ("delete", "/v1/units/u1", Scope.ANALYZE),
    ],
    ids=lambda v: v.value if isinstance(v, Scope) else v,
)
async def test_routes_refuse_keys_without_their_scope(
    client: Client, setup: dict[str, str], make_key: KeyFactory, method: str, path: str, scope: Scope
) -> None:
    await make_experiment(client, setup, "greet-test", "greet", start=False)
    body = {"json": {}} if method in ("post", "patch") else {}
    anonymous = await getattr(client, method)(path, **body)
    assert anonymous.status_code == 401
    assert problem(anonymous)["type"] == "/problems/unauthorized"
    headers = await make_key(scope, name="narrow")
    forbidden = await getattr(client, method)(path, headers=headers, **body)
    assert forbidden.status_code == 403
    assert problem(forbidden)["type"] == "/problems/forbidden"


async def test_start_runs_phase_one_and_routes_units(client: Client, setup: dict[str, str]) -> None:
    body = await make_experiment(client, setup, "greet-test", "greet")
    assert body["status"] == "running"
    assert body["phase"] == 1
    assert body["phases"][0]["reason"] == "started"
    outcomes = [await render(client, setup, f"user-{i}") for i in range(30)]
    variants = {o["experiment"]["variant"] for o in outcomes}
    assert variants == {"control", "treatment"}
    for outcome in outcomes:
        assert outcome["version"] == (1 if outcome["experiment"]["variant"] == "control" else 2)
        assert outcome["experiment"]["in_experiment"] is True
    again = [await render(client, setup, f"user-{i}") for i in range(30)]
    assert [o["experiment"] for o in again] == [o["experiment"] for o in outcomes]


async def test_experiments_apply_only_to_production_traffic_with_a_unit(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet", forced_variants={"qa": "treatment"})
    assert (await render(client, setup, None))["experiment"] is None
    pinned = await render(client, setup, "qa", version=1)
    assert pinned["version"] == 1
    assert pinned["experiment"] is None
    assert (await render(client, setup, "qa", label="latest"))["experiment"] is None
    assert (await render(client, setup, "qa"))["experiment"]["variant"] == "treatment"


async def test_resolve_with_a_unit_reports_the_experiment_in_headers(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet", forced_variants={"qa": "treatment"})
    response = await client.get("/v1/prompts/greet", params={"unit": "qa"}, headers=setup)
    assert response.status_code == 200
    assert response.json()["version"]["version"] == 2
    assert response.headers["x-registry-experiment"] == "greet-test"
    assert response.headers["x-registry-experiment-phase"] == "1"
    assert response.headers["x-registry-variant"] == "treatment"
    assert response.headers["x-registry-in-experiment"] == "true"
    plain = await client.get("/v1/prompts/greet", headers=setup)
    assert plain.json()["version"]["version"] == 1
    assert "x-registry-experiment" not in plain.headers


async def test_only_one_experiment_runs_per_prompt(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "first", "greet")
    await make_experiment(client, setup, "second", "greet", start=False)
    response = await client.post("/v1/experiments/second/start", headers=setup)
    assert response.status_code == 409
    assert problem(response)["type"] == "/problems/experiment_conflict"


async def test_starting_needs_a_primary_metric_and_a_draft(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "no-metric", "greet", start=False, primary_metric=None)
    response = await client.post("/v1/experiments/no-metric/start", headers=setup)
    assert response.status_code == 422
    assert problem(response)["errors"][0]["field"] == "primary_metric"
    await make_experiment(client, setup, "greet-test", "greet")
    again = await client.post("/v1/experiments/greet-test/start", headers=setup)
    assert again.status_code == 409
    assert problem(again)["type"] == "/problems/experiment_state"


async def test_changing_weights_or_seed_starts_a_new_phase(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    response = await client.patch(
        "/v1/experiments/greet-test",
        json={"weights": {"control": 1, "treatment": 3}, "reason": "more treatment"},
        headers=setup,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["phase"] == 2
    assert body["phases"][0]["ended_at"] is not None
    assert body["phases"][1] | {"started_at": None} == {
        "number": 2,
        "started_at": None,
        "ended_at": None,
        "reason": "more treatment",
        "seed": "greet-test",
        "weights": [0.25, 0.75],
        "coverage": 1.0,
        "units_in_multiple_variants": 0,
    }
    response = await client.patch("/v1/experiments/greet-test", json={"hash_seed": "reseeded"}, headers=setup)
    assert response.json()["phase"] == 3
    await settle(client)
    assert (await render(client, setup, "someone"))["experiment"]["phase"] == 3


async def test_raising_coverage_keeps_the_phase_and_every_included_unit_in_its_variant(
    client: Client, setup: dict[str, str]
) -> None:
    await make_experiment(client, setup, "greet-test", "greet", coverage=0.3)
    units = [f"user-{i}" for i in range(200)]
    before = {u: (await render(client, setup, u))["experiment"] for u in units}
    included = [u for u in units if before[u]["in_experiment"]]
    assert 30 < len(included) < 90
    response = await client.patch("/v1/experiments/greet-test", json={"coverage": 0.9}, headers=setup)
    assert response.json()["phase"] == 1
    assert response.json()["phases"][0]["coverage"] == 0.9
    await settle(client)
    after = {u: (await render(client, setup, u))["experiment"] for u in units}
    assert all(after[u]["variant"] == before[u]["variant"] for u in included)
    assert sum(a["in_experiment"] for a in after.values()) > len(included)
    lowered = await client.patch("/v1/experiments/greet-test", json={"coverage": 0.5}, headers=setup)
    assert lowered.json()["phase"] == 2


async def test_traffic_of_a_running_experiment_needs_promote(
    client: Client, setup: dict[str, str], make_key: KeyFactory
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    writer = await make_key(Scope.WRITE, name="writer")
    response = await client.patch("/v1/experiments/greet-test", json={"coverage": 0.5}, headers=writer)
    assert response.status_code == 403
    response = await client.get("/v1/experiments/greet-test", headers=setup)
    assert response.json()["coverage"] == 1.0
    described = await client.patch("/v1/experiments/greet-test", json={"description": "why"}, headers=writer)
    assert described.status_code == 200


async def test_variants_cannot_change_once_running(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    response = await client.patch(
        "/v1/experiments/greet-test",
        json={"variants": [{"key": "a", "prompt_version": 1}, {"key": "b", "prompt_version": 2}]},
        headers=setup,
    )
    assert response.status_code == 409


async def test_experiments_in_one_namespace_never_share_a_unit(client: Client, setup: dict[str, str]) -> None:
    await make_prompt(client, setup, "other")
    await make_experiment(client, setup, "left", "greet", namespace={"name": "flow", "start": 0, "end": 0.5})
    await make_experiment(client, setup, "right", "other", namespace={"name": "flow", "start": 0.5, "end": 1})
    both = 0
    in_left = in_right = 0
    for i in range(300):
        left = (await render(client, setup, f"user-{i}"))["experiment"]["in_experiment"]
        right = (await render(client, setup, f"user-{i}", prompt="other"))["experiment"]["in_experiment"]
        both += left and right
        in_left += left
        in_right += right
    assert both == 0
    assert in_left > 100
    assert in_right > 100


async def test_overlapping_namespace_ranges_cannot_run_together(client: Client, setup: dict[str, str]) -> None:
    await make_prompt(client, setup, "other")
    await make_experiment(client, setup, "left", "greet", namespace={"name": "flow", "start": 0, "end": 0.6})
    await make_experiment(
        client, setup, "right", "other", start=False, namespace={"name": "flow", "start": 0.5, "end": 1}
    )
    response = await client.post("/v1/experiments/right/start", headers=setup)
    assert response.status_code == 409
    assert "overlaps" in problem(response)["detail"]


async def test_forced_units_see_their_variant_and_are_not_counted(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet", start=False, forced_variants={"qa-1": "treatment"})
    preview = await client.post(
        "/v1/experiments/greet-test/preview", json={"unit": "qa-1", "variables": {"x": "hi"}}, headers=setup
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["version"] == 2
    assert preview.json()["experiment"] == {
        "key": "greet-test",
        "phase": 0,
        "variant": "treatment",
        "in_experiment": True,
    }
    assert (await render(client, setup, "qa-1"))["experiment"] is None  # a draft routes no production render
    assert (await render(client, setup, "someone"))["experiment"] is None
    await client.post("/v1/experiments/greet-test/start", headers=setup)
    await settle(client)
    for _ in range(3):
        assert (await render(client, setup, "qa-1"))["experiment"]["variant"] == "treatment"
    await flush_and_aggregate(client)
    held = (await client.get("/v1/units/qa-1", headers=setup)).json()  # its pin only: no exposure, no standing
    assert (held["exposures"], held["experiments"]) == ([], [])
    assert held["forced_variants"] == [{"experiment": "greet-test", "variant": "treatment"}]


async def test_stopping_with_a_winner_promotes_its_version(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    response = await client.post(
        "/v1/experiments/greet-test/stop", json={"winner": "treatment", "reason": "clear win"}, headers=setup
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["experiment"]["status"] == "stopped"
    assert body["experiment"]["winner"] == "treatment"
    assert body["promoted"] == {"prompt": "greet", "version": 2, "created_version": False, "changed": True}
    resolved = await client.get("/v1/prompts/greet", headers=setup)
    assert resolved.json()["labels"]["production"] == 2
    history = (await client.get("/v1/prompts/greet/history", headers=setup)).json()["items"]
    assert history[0]["version"] == 2
    assert history[0]["to_state"] == "production"
    assert "greet-test" in history[0]["reason"]
    audit = (await client.get("/v1/audit", params={"resource_type": "experiment"}, headers=setup)).json()["items"]
    assert audit[0]["action"] == "experiment.stop"
    await settle(client)
    assert (await render(client, setup, "user-1"))["experiment"] is None


async def test_a_winner_with_its_own_config_is_promoted_with_that_config(client: Client, setup: dict[str, str]) -> None:
    await client.post("/v1/configs", json={"name": "fast"}, headers=setup)
    created = await client.post(
        "/v1/configs/fast/versions", json={"backend": "vllm", "model": "small-model"}, headers=setup
    )
    assert created.status_code == 201, created.text
    await make_experiment(
        client,
        setup,
        "greet-test",
        "greet",
        variants=[
            {"key": "control", "prompt_version": 1},
            {"key": "small", "prompt_version": 1, "config": {"name": "fast", "version": 1}},
        ],
    )
    response = await client.post("/v1/experiments/greet-test/stop", json={"winner": "small"}, headers=setup)
    assert response.json()["promoted"] == {"prompt": "greet", "version": 3, "created_version": True, "changed": True}
    resolved = (await client.get("/v1/prompts/greet", headers=setup)).json()
    assert resolved["version"]["version"] == 3
    assert resolved["version"]["config"]["name"] == "fast"
    assert resolved["version"]["template"] == "v1 says {{ x }}"


async def test_stopping_without_a_winner_leaves_production_alone(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    response = await client.post("/v1/experiments/greet-test/stop", json={}, headers=setup)
    assert response.json()["promoted"] is None
    assert (await client.get("/v1/prompts/greet", headers=setup)).json()["labels"]["production"] == 1
    again = await client.post("/v1/experiments/greet-test/stop", json={}, headers=setup)
    assert again.status_code == 409


async def test_unknown_winner_is_refused_and_nothing_changes(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    response = await client.post("/v1/experiments/greet-test/stop", json={"winner": "nope"}, headers=setup)
    assert response.status_code == 422
    assert (await client.get("/v1/experiments/greet-test", headers=setup)).json()["status"] == "running"


async def test_list_filters_by_status_and_prompt(client: Client, setup: dict[str, str]) -> None:
    await make_prompt(client, setup, "other")
    await make_experiment(client, setup, "a-running", "greet")
    await make_experiment(client, setup, "b-draft", "other", start=False)
    running = (await client.get("/v1/experiments", params={"status": "running"}, headers=setup)).json()
    assert [e["key"] for e in running["items"]] == ["a-running"]
    on_other = (await client.get("/v1/experiments", params={"prompt": "other"}, headers=setup)).json()
    assert [e["key"] for e in on_other["items"]] == ["b-draft"]


async def test_metrics_are_defined_once_with_valid_aggregations(client: Client, setup: dict[str, str]) -> None:
    await make_metric(client, setup, "latency", kind="continuous", aggregation="mean", direction="lower")
    metric = (await client.get("/v1/metrics/latency", headers=setup)).json()
    assert metric["aggregation"] == "mean"
    assert metric["direction"] == "lower"
    duplicate = await client.post("/v1/metrics", json={"key": "latency", "kind": "continuous"}, headers=setup)
    assert duplicate.status_code == 409
    wrong = await client.post("/v1/metrics", json={"key": "x", "kind": "binomial", "aggregation": "sum"}, headers=setup)
    assert wrong.status_code == 422
    assert problem(wrong)["errors"][0]["field"] == "aggregation"
    source = await client.post(
        "/v1/metrics", json={"key": "y", "kind": "continuous", "source": "nowhere"}, headers=setup
    )
    assert problem(source)["errors"][0]["field"] == "source"


async def test_moving_a_running_experiment_into_an_occupied_namespace_range_is_refused(
    client: Client, setup: dict[str, str]
) -> None:
    await make_prompt(client, setup, "other")
    await make_experiment(client, setup, "left", "greet", namespace={"name": "flow", "start": 0, "end": 0.5})
    await make_experiment(client, setup, "right", "other", namespace={"name": "flow", "start": 0.5, "end": 1})
    response = await client.patch(
        "/v1/experiments/right", json={"namespace": {"name": "flow", "start": 0.4, "end": 1}}, headers=setup
    )
    assert response.status_code == 409
    assert (await client.get("/v1/experiments/right", headers=setup)).json()["phase"] == 1


async def test_the_openapi_schema_documents_the_experiment_routes(client: Client) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    operations = {
        operation["operationId"]
        for path in response.json()["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }
    assert {
        "createExperiment",
        "startExperiment",
        "stopExperiment",
        "experimentResults",
        "exportExperimentUnits",
        "recordEvents",
        "recordExposures",
        "createMetric",
        "getUnitData",
        "eraseUnitData",
    } <= operations


async def test_routing_reads_nothing_from_the_database(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    for i in range(10):  # warm: the prompt, both variants' versions and the API key are cached now
        await render(client, setup, f"warm-{i}")
    with statements_of_this_block(runtime_of(client.app)) as statements:
        variants = {(await render(client, setup, f"user-{i}"))["experiment"]["variant"] for i in range(50)}
    assert variants == {"control", "treatment"}
    assert statements == []


async def test_a_change_on_one_replica_reaches_the_router_of_another(
    client: Client, setup: dict[str, str], settings: Settings
) -> None:
    async with serve_in_process(create_app(settings)) as replica:
        await replica.get("/health")
        await make_experiment(client, setup, "greet-test", "greet")
        await until_running_here(replica, "greet-test")
        assert (await render(replica, setup, "user-1"))["experiment"]["key"] == "greet-test"
        await client.post("/v1/experiments/greet-test/stop", json={}, headers=setup)
        for _ in range(250):
            if runtime_of(replica.app).experiments.router.running("greet-test") is None:
                break
            await asyncio.sleep(0.02)
        assert (await render(replica, setup, "user-1"))["experiment"] is None


async def test_keys_with_slashes_work_encoded(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "team/greet-test", "greet", start=False)
    response = await client.post("/v1/experiments/team%2Fgreet-test/start", headers=setup)
    assert response.status_code == 200
    assert (await client.get("/v1/experiments/team%2Fgreet-test", headers=setup)).json()["status"] == "running"


async def test_an_invalid_update_changes_nothing(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    before = (await client.get("/v1/experiments/greet-test", headers=setup)).json()
    response = await client.patch(
        "/v1/experiments/greet-test",
        json={"weights": {"control": 1, "other": 2}, "guardrail_metrics": ["nope"], "coverage": 0.5},
        headers=setup,
    )
    assert response.status_code == 422
    assert {e["field"] for e in problem(response)["errors"]} == {"weights", "metrics"}
    assert (await client.get("/v1/experiments/greet-test", headers=setup)).json() == before


async def test_hash_version_and_attribute_change_on_a_draft_only(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet", start=False)
    changed = await client.patch(
        "/v1/experiments/greet-test", json={"hash_version": 1, "hash_attribute": "user_id"}, headers=setup
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["assignment"]["hashVersion"] == 1
    assert changed.json()["assignment"]["hashAttribute"] == "user_id"
    await client.post("/v1/experiments/greet-test/start", headers=setup)
    for field, value in (("hash_version", 2), ("hash_attribute", "id")):
        refused = await client.patch("/v1/experiments/greet-test", json={field: value}, headers=setup)
        assert refused.status_code == 409, field
        assert problem(refused)["type"] == "/problems/experiment_state"
