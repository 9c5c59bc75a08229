"""Requests refused before routing (415, 414, 431) or at routing (405) are answered in the shape of the path's errors.

On the OpenAI-compatible door's paths that is OpenAI's error object with the problem inside, as every other
error of the door; elsewhere, problem+json. ``registry.app`` passes the door's shape to the request middleware
and the app's exception handler.
"""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from registry.app import API_PREFIX
from registry.settings import Settings
from tests.conftest import AppClient, openai_door_paths, openai_problem, problem

Request = tuple[str, str, dict[str, Any]]


def refused(status: int, settings: Settings, door: bool) -> Request:
    """A request refused with ``status``: on a door path (``door``), or on another API path."""
    many_headers = {f"x-extra-{number}": "v" for number in range(settings.max_request_headers + 1)}
    long_query = {"prefix": "a" * settings.max_url_bytes}
    cases: dict[int, tuple[Request, Request]] = {
        415: (
            ("POST", "/v1/chat/completions", {"content": b"{}", "headers": {"content-type": "text/plain"}}),
            ("POST", "/v1/prompts/p/render", {"content": b"{}", "headers": {"content-type": "text/plain"}}),
        ),
        414: (("GET", "/v1/models", {"params": long_query}), ("GET", "/v1/prompts", {"params": long_query})),
        431: (
            ("POST", "/v1/completions", {"json": {}, "headers": many_headers}),
            ("GET", "/v1/prompts", {"headers": many_headers}),
        ),
        405: (("GET", "/v1/chat/completions", {}), ("PUT", "/v1/prompts", {})),
        422: (
            ("GET", "/v1/models", {"params": {"after": "a\x00"}}),
            ("GET", "/v1/prompts", {"params": {"prefix": "\x00"}}),
        ),
    }
    return cases[status][0 if door else 1]


@pytest.mark.parametrize("door", [True, False], ids=["door path", "other path"])
@pytest.mark.parametrize("status", [415, 414, 431, 405, 422])
async def test_a_refusal_has_the_shape_of_its_paths_errors(
    client: AppClient, admin: dict[str, str], settings: Settings, status: int, door: bool
) -> None:
    method, path, options = refused(status, settings, door)
    response = await client.request(method, path, **{**options, "headers": {**admin, **options.get("headers", {})}})

    assert response.status_code == status, response.text
    document = openai_problem(response) if door else problem(response)
    assert document["instance"] == path
    if status == 405:
        assert response.headers["allow"]


async def test_a_nul_in_the_path_or_a_query_parameter_is_refused_naming_where(
    client: AppClient, admin: dict[str, str]
) -> None:
    """No name, key, cursor or value may hold a NUL, and the database cannot store one: a route answered a 422
    naming no parameter (a list's prefix), or looked the name up (a key's budget, a render on the fast path)."""
    requests = [
        ("GET", "/v1/prompts?prefix=a%00&limit=5", "prefix"),
        ("GET", "/v1/keys/%00/budget", "path"),
        ("POST", "/v1/prompts/a%00b/render", "path"),
        ("GET", "/v1/prompts?x%00=1", "x%00"),
    ]
    for method, path, where in requests:
        response = await client.request(method, path, headers=admin, json={} if method == "POST" else None)

        assert response.status_code == 422, (path, response.text)
        assert [error["field"] for error in problem(response)["errors"]] == [where]


def _concrete(route_path: str) -> str:
    return "/".join("x" if part.startswith("{") else part for part in route_path.split("/"))


async def test_the_door_shape_covers_exactly_the_door_routes(app: Litestar) -> None:
    """A route added to the door is shaped as the door; no other API route is."""
    door = openai_door_paths(app)
    api_paths = {
        route.path for route in app.routes if isinstance(route, HTTPRoute) and route.path.startswith(API_PREFIX)
    }
    for path in api_paths:
        response_shape = await _shape_of_405(app, _concrete(path))
        assert response_shape == ("openai" if path in door else "problem"), path


async def _shape_of_405(app: Litestar, path: str) -> str:
    """The shape of the answer to a method no route has (``TRACE``), refused at routing."""
    async with AppClient(app) as http:
        response = await http.request("TRACE", path)
    assert response.status_code == 405, (path, response.text)
    if response.headers["content-type"].startswith("application/problem+json"):
        return "problem"
    openai_problem(response)
    return "openai"
