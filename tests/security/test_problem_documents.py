"""Every error the app can answer is a problem document, and the OpenAPI declares it (issue 17 item 7).

Requests over the HTTP server's own limits are answered by the server itself (an empty body under
granian); the app's limits sit below them so that it answers first, with a problem document. What
reaches the servers over real sockets is in ``test_server_errors.py``.
"""

from __future__ import annotations

import pytest

from registry.settings import Settings
from tests.api import Client, Headers
from tests.conftest import problem


async def test_an_unknown_schema_page_is_a_problem_not_an_html_page(client: Client) -> None:
    response = await client.get("/schema/swagger")
    assert response.status_code == 404
    assert problem(response)["type"] == "/problems/not_found"
    assert (await client.get("/schema")).status_code == 200
    assert (await client.get("/schema/openapi.json")).status_code == 200


async def test_a_request_target_over_the_limit_is_414(client: Client, admin: Headers, settings: Settings) -> None:
    long_path = "/v1/prompts/" + "a" * settings.max_url_bytes
    response = await client.get(long_path, headers=admin)
    assert response.status_code == 414
    assert problem(response)["type"] == "/problems/uri_too_long"
    long_query = await client.get("/v1/prompts", params={"prefix": "a" * settings.max_url_bytes}, headers=admin)
    assert long_query.status_code == 414
    problem(long_query)


@pytest.mark.parametrize("shape", ["many", "large"])
async def test_headers_over_the_limit_are_431_without_a_key(client: Client, settings: Settings, shape: str) -> None:
    if shape == "many":
        headers = {f"x-extra-{number}": "v" for number in range(settings.max_request_headers + 1)}
    else:
        headers = {"x-large": "v" * settings.max_header_bytes}
    response = await client.post("/v1/prompts/p/render", json={"variables": {}}, headers=headers)
    assert response.status_code == 431
    assert problem(response)["type"] == "/problems/headers_too_large"


def _declared(schema: dict[str, object], path: str, method: str) -> set[str]:
    paths = schema["paths"]
    assert isinstance(paths, dict)
    return set(paths[path][method]["responses"])


async def test_the_schema_declares_every_status_the_app_answers_before_routing(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            assert {"414", "431"} <= declared, f"{method} {path}"
            if method in ("post", "put", "patch"):
                assert {"408", "413", "415"} <= declared, f"{method} {path}"


async def test_results_and_export_declare_the_conflict_of_an_experiment_not_started(
    client: Client, admin: Headers
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert "409" in _declared(schema, "/v1/experiments/{key}/results", "get")
    assert "409" in _declared(schema, "/v1/experiments/{key}/export", "get")
