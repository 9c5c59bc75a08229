"""The OpenAPI says how to call each operation, and its documentation page works without the internet."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from litestar import Litestar

from registry.app import API_PREFIX, declared_scope
from registry.lib.openapi import DOCS_ASSETS_PATH
from registry.lib.operation_docs import OPERATION_DESCRIPTIONS

METHODS = ("get", "post", "put", "patch", "delete")


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


@pytest.fixture
async def schema(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


async def test_every_operation_has_a_description(schema: dict[str, Any]) -> None:
    undescribed = [op["operationId"] for _, _, op in operations(schema) if not op.get("description", "").strip()]
    assert undescribed == []


async def test_no_description_is_written_for_an_operation_that_does_not_exist(schema: dict[str, Any]) -> None:
    served = {op["operationId"] for _, _, op in operations(schema)}
    assert set(OPERATION_DESCRIPTIONS) - served == set()


async def test_every_api_operation_names_the_scope_its_route_checks(schema: dict[str, Any], app: Litestar) -> None:
    checked = {
        (route.path_format, method.lower()): declared_scope(handler)
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        for method in handler.http_methods
    }
    api = [(path, method, op) for path, method, op in operations(schema) if path.startswith(API_PREFIX)]
    assert len(api) > 50
    for path, method, op in api:
        scope = checked[(path, method)]
        assert scope is not None
        assert op["x-required-scope"] == scope, op["operationId"]
        assert f"Requires the `{scope}` scope" in op["description"]
        assert op["security"] == [{"apiKey": []}]


async def test_the_system_routes_need_no_key(schema: dict[str, Any]) -> None:
    system = [op for path, _, op in operations(schema) if not path.startswith(API_PREFIX)]
    assert system
    assert all("security" not in op and "x-required-scope" not in op for op in system)


async def test_bearer_authentication_is_declared(schema: dict[str, Any]) -> None:
    scheme = schema["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


async def test_the_name_parameter_says_slashes_are_sent_as_percent_2f(schema: dict[str, Any]) -> None:
    names = [
        parameter
        for path, _, op in operations(schema)
        if "{name}" in path
        for parameter in op.get("parameters", [])
        if parameter["name"] == "name" and parameter["in"] == "path"
    ]
    assert len(names) == len([path for path, _, _ in operations(schema) if "{name}" in path]) > 0
    assert all("%2F" in parameter["description"] for parameter in names)


async def test_the_docs_page_loads_only_assets_this_service_serves(client: httpx.AsyncClient) -> None:
    page = await client.get("/schema")
    assert page.status_code == 200
    references = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert {reference.rsplit("/", 1)[-1] for reference in references} == {
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-ui.css",
        "favicon-32x32.png",
    }
    assert "://" not in page.text.replace("http://testserver", "")
    for reference in references:
        assert reference.startswith(f"{DOCS_ASSETS_PATH}/")
        asset = await client.get(reference)
        assert asset.status_code == 200, reference
        assert len(asset.content) > 0
        assert "max-age" in asset.headers["cache-control"]


async def test_an_unknown_asset_is_a_problem(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{DOCS_ASSETS_PATH}/nothing.js")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
