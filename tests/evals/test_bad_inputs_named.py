"""Bad input to the evaluation routes is a 4xx problem naming the field, and writes nothing.

Each case was once refused without saying which field (the database refused a NUL, or a version number too large
for its column) or answered 500 (a version that ``str.isdigit`` takes and ``int`` does not).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AppClient
from tests.evals.conftest import answers, dataset, ok, publish

GOOD_ITEMS = [{"variables": {"answer": "a"}, "expected": "a"}]


async def setup(client: AppClient, admin: dict[str, str]) -> int:
    version = await publish(client, admin, "named")
    await dataset(client, admin, "named-cases", answers(("a", "a")))
    return version


def run_body(version: int, **fields: Any) -> dict[str, Any]:
    return {"prompt": "named", "version": version, "dataset": {"name": "named-cases"}, **fields}


async def counts(client: AppClient, admin: dict[str, str]) -> tuple[int, int]:
    """How many dataset versions and runs exist: a refused request adds neither."""
    dataset_body = await ok(await client.get("/v1/evals/datasets/named-cases", headers=admin))
    runs = await ok(await client.get("/v1/evals/runs", headers=admin))
    return dataset_body["latest_version"], len(runs["items"])


def assert_problem_names(response: Any, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [error["field"] for error in response.json().get("errors", [])], response.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": [{"variables": 5}]}, "items[0].variables"),
        ({"items": [*GOOD_ITEMS, {"expected": 7}]}, "items[1].expected"),
        ({"items": GOOD_ITEMS, "commit_message": "first\u0000line"}, "commit_message"),
    ],
    ids=["variables-not-an-object", "expected-not-text", "nul-in-commit-message"],
)
async def test_a_bad_dataset_version_names_its_field(
    evals: AppClient, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    await setup(evals, admin)
    before = await counts(evals, admin)
    response = await evals.post("/v1/evals/datasets/named-cases/versions", json=body, headers=admin)
    assert_problem_names(response, 422, field)
    assert await counts(evals, admin) == before


@pytest.mark.parametrize(
    "version",
    ["2147483648", "9" * 5000, "%C2%B2"],
    ids=["past-the-column", "thousands-of-digits", "superscript-two"],
)
@pytest.mark.parametrize("route", ["", "/items", "/export"])
async def test_a_dataset_version_that_is_no_number_is_a_problem_naming_version(
    evals: AppClient, admin: dict[str, str], version: str, route: str
) -> None:
    await setup(evals, admin)
    response = await evals.get(f"/v1/evals/datasets/named-cases/versions/{version}{route}", headers=admin)
    assert_problem_names(response, 422, "version")


@pytest.mark.parametrize(
    ("scorer", "field"),
    [
        ({"kind": "contains", "value": "a\u0000"}, "scorers[0].value"),
        ({"kind": "exact_match", "name": "x\u0000"}, "scorers[0].name"),
    ],
    ids=["nul-in-a-value", "nul-in-a-name"],
)
async def test_a_scorer_holding_a_nul_is_refused_by_name_for_a_run_and_a_gate(
    evals: AppClient, admin: dict[str, str], scorer: dict[str, Any], field: str
) -> None:
    version = await setup(evals, admin)
    before = await counts(evals, admin)
    response = await evals.post("/v1/evals/runs", json=run_body(version, scorers=[scorer]), headers=admin)
    assert_problem_names(response, 422, field)
    assert await counts(evals, admin) == before

    gate = {"dataset": {"name": "named-cases"}, "min_pass_rate": 0.5, "scorers": [scorer]}
    response = await evals.put("/v1/prompts/named/gates/production", json=gate, headers=admin)
    assert_problem_names(response, 422, field)
    assert (await evals.get("/v1/prompts/named/gates/production", headers=admin)).status_code == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_a_state_that_cannot_be_gated_is_a_problem_naming_target_state(
    evals: AppClient, admin: dict[str, str], method: str
) -> None:
    await setup(evals, admin)
    body = {"dataset": {"name": "named-cases"}, "min_pass_rate": 0.5} if method == "PUT" else None
    response = await evals.request(
        method, "/v1/prompts/named/gates/archived", headers=admin, **({"json": body} if body else {})
    )
    assert_problem_names(response, 422, "target_state")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/evals/runs/{id}"),
        ("GET", "/v1/evals/runs/{id}/items"),
        ("GET", "/v1/evals/runs/{id}/events"),
        ("POST", "/v1/evals/runs/{id}/cancel"),
        ("GET", "/v1/evals/compare?base={id}&candidate=1"),
    ],
    ids=["run", "items", "events", "cancel", "compare"],
)
async def test_a_run_id_past_the_id_column_is_a_run_not_found(
    evals: AppClient, admin: dict[str, str], method: str, path: str
) -> None:
    response = await evals.request(method, path.format(id=2**63), headers=admin)
    assert response.status_code == 404, response.text
    assert response.json()["type"] == "/problems/eval_run_not_found"
