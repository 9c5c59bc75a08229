"""A request without a parameter its route requires is refused naming that parameter."""

from __future__ import annotations

from tests.api import Client
from tests.conftest import problem


async def test_a_missing_query_parameter_is_named(client: Client, admin: dict[str, str]) -> None:
    response = await client.get("/v1/evals/compare?base=1", headers=admin)
    assert response.status_code == 422, response.text
    body = problem(response)
    assert body["detail"] == "the request query is invalid"
    assert body["errors"] == [{"field": "candidate", "message": "required: the query parameter is missing"}]


async def test_one_of_several_missing_parameters_is_named(client: Client, admin: dict[str, str]) -> None:
    """Litestar stops at the first parameter it misses (in an order of its own)."""
    response = await client.get("/v1/evals/compare", headers=admin)
    assert response.status_code == 422, response.text
    body = problem(response)
    assert body["detail"] == "the request query is invalid"
    assert [error["field"] for error in body["errors"]] in (["base"], ["candidate"])
