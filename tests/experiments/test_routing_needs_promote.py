"""A ``write`` key can never change which version production traffic gets.

Drafts never route production renders (their forced units are seen through the explicit preview),
and on a running experiment every change of what units get needs ``promote``. The test walks every
field of every experiment route with a write key, rendering a set of units before and after each
attempt: no unit's production version, config or variant may change, and the attempts that would
have changed routing answer 403 problem+json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from litestar.routes import HTTPRoute

from registry.auth.keys import Scope
from registry.experiments.schemas import UpdateExperiment
from tests.conftest import KeyFactory, problem
from tests.experiments.conftest import Client, make_experiment, make_metric, make_prompt, settle

UNITS = ["victim-1", "victim-2", "qa-1", *(f"user-{i}" for i in range(120))]
PROMPTS = ("greet", "other")
MANY_FORCED = {f"user-{i}": "candidate" for i in range(120)} | {"victim-1": "candidate"}
TWO_VARIANTS = [{"key": "control", "prompt_version": 1}, {"key": "candidate", "prompt_version": 2}]

AREA = ("/v1/experiments", "/v1/metrics", "/v1/exposures", "/v1/events", "/v1/units")

Snapshot = dict[tuple[str, str], tuple[Any, ...]]


@dataclass(frozen=True)
class Attempt:
    what: str
    method: str
    path: str
    body: dict[str, Any] | None
    status: int  # what a write key gets


def running(field: str, value: Any, status: int) -> Attempt:
    return Attempt(f"running: {field}", "PATCH", "/v1/experiments/live", {field: value}, status)


def draft(field: str, value: Any) -> Attempt:
    return Attempt(f"draft: {field}", "PATCH", "/v1/experiments/draft-exp", {field: value}, 200)


# Every field of the update, on the running experiment: 403 where routing would change, 409 where the status
# forbids it, 200 where units are unaffected. Values equal to the current ones change nothing and pass.
RUNNING_UPDATES = [
    running("weights", {"control": 1, "candidate": 3}, 403),
    running("coverage", 1.0, 403),  # raising it moves units into the experiment
    running("coverage", 0.2, 403),
    running("hash_seed", "another-seed", 403),
    running("namespace", {"name": "ns", "start": 0, "end": 0.3}, 403),
    running("namespace", None, 403),
    running("forced_variants", MANY_FORCED, 403),
    running("forced_variants", {}, 403),  # qa-1 would leave its variant
    running("weights", {"control": 2, "candidate": 2}, 200),  # the same split
    running("coverage", 0.5, 200),
    running("forced_variants", {"qa-1": "control"}, 200),
    running("variants", [*TWO_VARIANTS[:1], {"key": "candidate", "prompt_version": 2, "weight": 5}], 409),
    running("hash_version", 1, 409),
    running("hash_attribute", "user_id", 409),
    running("description", "why we test", 200),
    running("primary_metric", "latency", 200),
    running("guardrail_metrics", ["converted"], 200),
    running("correction", "none", 200),
    running("alpha", 0.1, 200),
    running("sequential", True, 200),
    running("sequential_tuning", 1000.0, 200),
    running("cuped", True, 200),
    running("cuped_lookback_days", 7, 200),
    running("reason", "no reason", 200),
]
DRAFT_UPDATES = [
    draft("forced_variants", MANY_FORCED),
    draft("weights", {"control": 1, "candidate": 9}),
    draft("coverage", 1.0),
    draft("hash_seed", "seed-2"),
    draft("hash_version", 1),
    draft("hash_attribute", "user_id"),
    draft("namespace", {"name": "ns", "start": 0.7, "end": 1}),
    draft("variants", [{"key": "control", "prompt_version": 2}, {"key": "candidate", "prompt_version": 2}]),
]
OTHER_ROUTES = [
    Attempt(
        "create a draft forcing victims onto a draft version",
        "POST",
        "/v1/experiments",
        {
            "key": "sneaky",
            "prompt": "greet",
            "variants": TWO_VARIANTS,
            "forced_variants": {"victim-1": "candidate", "victim-2": "candidate"},
        },
        201,
    ),
    Attempt("start a draft", "POST", "/v1/experiments/draft-exp/start", None, 403),
    Attempt("stop", "POST", "/v1/experiments/live/stop", {}, 403),
    Attempt("stop with a winner", "POST", "/v1/experiments/live/stop", {"winner": "candidate"}, 403),
    Attempt("preview", "POST", "/v1/experiments/draft-exp/preview", {"unit": "victim-1"}, 403),
    Attempt("list", "GET", "/v1/experiments", None, 403),
    Attempt("get", "GET", "/v1/experiments/live", None, 403),
    Attempt("results", "GET", "/v1/experiments/live/results", None, 403),
    Attempt("results over time", "GET", "/v1/experiments/live/results/timeseries", None, 403),
    Attempt("export", "GET", "/v1/experiments/live/export", None, 403),
    Attempt("define a metric", "POST", "/v1/metrics", {"key": "clicks", "kind": "continuous"}, 201),
    Attempt("describe a metric", "PATCH", "/v1/metrics/converted", {"description": "d"}, 200),
    Attempt("list metrics", "GET", "/v1/metrics", None, 403),
    Attempt("get a metric", "GET", "/v1/metrics/converted", None, 403),
    Attempt("record exposures", "POST", "/v1/exposures", {"exposures": []}, 403),
    Attempt("record events", "POST", "/v1/events", {"events": []}, 403),
    Attempt("unit data", "GET", "/v1/units/victim-1", None, 403),
    Attempt("erase a unit", "DELETE", "/v1/units/victim-1", None, 403),
]
ATTEMPTS = RUNNING_UPDATES + DRAFT_UPDATES + OTHER_ROUTES


async def snapshot(client: Client, headers: dict[str, str]) -> Snapshot:
    """What each unit's production render of each prompt is: version, config, experiment."""
    seen: Snapshot = {}
    for prompt in PROMPTS:
        for unit in UNITS:
            response = await client.post(
                f"/v1/prompts/{prompt}/render", json={"variables": {"x": "hi"}, "unit": unit}, headers=headers
            )
            assert response.status_code == 200, response.text
            body = response.json()
            seen[(prompt, unit)] = (body["version"], body["config"], body["experiment"])
    return seen


@pytest.fixture
async def arranged(client: Client, admin: dict[str, str]) -> dict[str, str]:
    """'greet' runs experiment 'live' (half the units, a namespace, qa-1 forced); 'other' has a draft with a
    forced victim. Version 2 of each prompt is an unpromoted draft."""
    for prompt in PROMPTS:
        await make_prompt(client, admin, prompt)
    await make_metric(client, admin, "converted")
    await make_metric(client, admin, "latency", kind="continuous")
    await make_experiment(
        client,
        admin,
        "live",
        "greet",
        variants=TWO_VARIANTS,
        coverage=0.5,
        namespace={"name": "ns", "start": 0, "end": 0.6},
        forced_variants={"qa-1": "control"},
    )
    await make_experiment(
        client,
        admin,
        "draft-exp",
        "other",
        start=False,
        variants=TWO_VARIANTS,
        forced_variants={"victim-1": "candidate"},
    )
    return admin


def test_every_update_field_and_experiment_route_is_walked(client: Client) -> None:
    walked_fields = {name for attempt in RUNNING_UPDATES for name in attempt.body or {}}
    assert walked_fields == set(UpdateExperiment.__struct_fields__)
    walked_routes = {(a.method, re.sub(r"/(live|draft-exp|converted|victim-1)\b", "/{key}", a.path)) for a in ATTEMPTS}
    routes = {
        (method, re.sub(r"\{\w+:\w+\}", "{key}", route.path).rstrip("/"))
        for route in client.app.routes
        if isinstance(route, HTTPRoute) and route.path.startswith(AREA)
        for method in route.methods - {"HEAD", "OPTIONS"}
    }
    assert routes - walked_routes == set()


async def test_a_write_key_never_changes_what_production_units_get(
    client: Client, arranged: dict[str, str], make_key: KeyFactory
) -> None:
    admin = arranged
    writer = await make_key(Scope.WRITE, name="writer")
    baseline = await snapshot(client, admin)
    assert baseline[("other", "victim-1")][2] is None  # the draft's forced victim is not routed
    assert sum(entry[2]["in_experiment"] for (prompt, _), entry in baseline.items() if prompt == "greet") > 10

    wrong = []
    for attempt in ATTEMPTS:
        response = await client.request(attempt.method, attempt.path, json=attempt.body, headers=writer)
        if response.status_code != attempt.status:
            wrong.append(f"{attempt.what}: {response.status_code} (expected {attempt.status}) {response.text[:200]}")
        elif attempt.status >= 400:
            problem(response)
        await settle(client)
        if await snapshot(client, admin) != baseline:
            wrong.append(f"{attempt.what}: production renders changed")
    assert not wrong, "\n".join(wrong)

    # The same change with promote does move units: the snapshot sees it.
    promoted = await client.patch("/v1/experiments/live", json={"forced_variants": MANY_FORCED}, headers=admin)
    assert promoted.status_code == 200, promoted.text
    await settle(client)
    assert await snapshot(client, admin) != baseline


async def test_a_draft_is_seen_only_through_an_explicit_preview(
    client: Client, arranged: dict[str, str], make_key: KeyFactory
) -> None:
    reader = await make_key(Scope.READ, name="app")

    production = await client.post(
        "/v1/prompts/other/render", json={"variables": {"x": "hi"}, "unit": "victim-1"}, headers=reader
    )
    preview = await client.post(
        "/v1/experiments/draft-exp/preview", json={"unit": "victim-1", "variables": {"x": "hi"}}, headers=reader
    )

    assert production.json()["version"] == 1
    assert production.json()["experiment"] is None
    assert preview.status_code == 200, preview.text
    assert preview.json()["version"] == 2
    assert preview.json()["text"] == "v2 says hi"
    assert preview.json()["experiment"] == {
        "key": "draft-exp",
        "phase": 0,
        "variant": "candidate",
        "in_experiment": True,
    }


async def test_preview_of_a_stopped_experiment_is_a_conflict(client: Client, arranged: dict[str, str]) -> None:
    admin = arranged
    assert (await client.post("/v1/experiments/live/stop", json={}, headers=admin)).status_code == 200

    response = await client.post("/v1/experiments/live/preview", json={"unit": "qa-1"}, headers=admin)

    assert response.status_code == 409
    assert problem(response)["type"] == "/problems/experiment_state"
