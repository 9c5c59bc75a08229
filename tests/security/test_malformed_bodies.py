"""Malformed bodies on every POST, PUT and PATCH route are 400/415 problems, never 500s (issue 17 item 4).

Every API route answers a problem document; the console's HTML form routes answer their own pages, never a 5xx.

The routes come from the app's own route table, so a route added later is covered without editing this file.
"""

from __future__ import annotations

import re

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from registry.app import API_PREFIX, create_app
from registry.settings import Settings
from tests.api import Client, Headers
from tests.conftest import openai_door_paths, openai_problem, problem

_BODY_METHODS = ("POST", "PUT", "PATCH")
_PARAMETER = re.compile(r"\{(\w+):(\w+)\}")


def _example_path(path: str) -> str:
    """A concrete path for a route template: ints become 1, strings a plain name."""
    return _PARAMETER.sub(lambda m: "1" if m.group(2) == "int" else "p", path)


APP: Litestar = create_app(Settings())
OPENAI_DOOR = openai_door_paths(APP)  # refusals in OpenAI's error object, with the problem inside


def body_routes() -> list[tuple[str, str, bool]]:
    """(method, concrete path, whether its handler reads a body) of every POST, PUT and PATCH route."""
    app = APP
    found = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                for method in handler.http_methods & set(_BODY_METHODS):
                    reads_body = "data" in handler.parsed_fn_signature.parameters
                    found.add((method, _example_path(route.path), reads_body))
    return sorted(found)


BODY_ROUTES = body_routes()
NESTED_ARRAYS = b"[" * 1000 + b"]" * 1000
NESTED_OBJECTS = b'{"a":' * 1000 + b"1" + b"}" * 1000
NESTED_VARIABLES = b'{"variables": {"v": ' + b"[" * 990 + b"]" * 990 + b"}}"
INVALID_UTF8 = b'{"name": "\xff\xfe caf\xc3"}'
INVALID_UTF8_VARIABLE = b'{"variables": {"v": "caf\xc3"}}'
MALFORMED = {
    "1000 nested arrays": NESTED_ARRAYS,
    "1000 nested objects": NESTED_OBJECTS,
    "990 nested arrays inside a field": NESTED_VARIABLES,
    "invalid UTF-8": INVALID_UTF8,
    "invalid UTF-8 inside a field": INVALID_UTF8_VARIABLE,
}


def test_every_body_route_is_covered() -> None:
    assert len(BODY_ROUTES) >= 25
    assert ("POST", "/v1/prompts/p/render", True) in BODY_ROUTES


@pytest.mark.parametrize("kind", list(MALFORMED))
async def test_malformed_json_is_400_on_every_body_route(
    client: Client, admin: Headers, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    failures = []
    for method, path, reads_body in BODY_ROUTES:
        response = await client.request(
            method, path, content=MALFORMED[kind], headers={**admin, "Content-Type": "application/json"}
        )
        if not path.startswith(API_PREFIX):  # the console's HTML forms: no 5xx is all that is asked of them
            if response.status_code >= 500:
                failures.append(f"{method} {path}: {response.status_code}")
            continue
        # A route that reads no body (start an experiment, ping a webhook) answers as if none was sent.
        expected = response.status_code == 400 if reads_body else response.status_code < 500
        if path in OPENAI_DOOR:
            if not expected or openai_problem(response)["type"] != "/problems/malformed_json":
                failures.append(f"{method} {path}: {response.status_code} {response.text[:120]}")
        elif not expected or not response.headers["content-type"].startswith("application/problem+json"):
            failures.append(f"{method} {path}: {response.status_code} {response.text[:120]}")
    assert not failures, "\n".join(failures)
    logged = capsys.readouterr()
    assert "Traceback" not in logged.out + logged.err, "a malformed body was logged with a traceback"


@pytest.mark.parametrize("with_key", [True, False], ids=["with a key", "without a key"])
@pytest.mark.parametrize(
    "content_type", ["text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", ""]
)
async def test_a_body_that_is_not_json_is_415_on_every_body_route(
    client: Client, admin: Headers, content_type: str, with_key: bool
) -> None:
    headers = {**(admin if with_key else {}), "Content-Type": content_type}
    failures = []
    for method, path, _ in BODY_ROUTES:
        if not path.startswith(API_PREFIX):
            continue  # the console's HTML forms take urlencoded bodies
        response = await client.request(method, path, content=b'{"variables": {}}', headers=headers)
        if response.status_code != 415:
            failures.append(f"{method} {path}: {response.status_code} {response.text[:120]}")
            continue
        openai_problem(response) if path in OPENAI_DOOR else problem(response)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("kind", list(MALFORMED))
async def test_malformed_json_without_a_key_is_a_problem_on_the_render_fast_path(client: Client, kind: str) -> None:
    """The render route is served in front of Litestar's routing (and its key check): it must not crash first."""
    response = await client.post(
        "/v1/prompts/p/render", content=MALFORMED[kind], headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 401)
    problem(response)
