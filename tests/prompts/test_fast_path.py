"""The fast path answers resolve and render exactly as the Litestar handlers behind it do.

Every request below is sent to two apps on the same database: one with the fast
path (the default) and one with ``fast_path=False``. Status, body and headers
must match, and each request must be served where expected: the well-formed
ones (successes and errors found while serving) by the fast path, the rest
handed on to Litestar.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from registry.app import create_app
from registry.auth.keys import Scope
from registry.lib.http import RequestContextMiddleware
from registry.prompts.fast_path import PromptFastPath
from registry.settings import Settings
from tests.api import Client, Headers, create_config, create_prompt, create_version, path, promote
from tests.conftest import AppClient, KeyFactory, serve_in_process, serve_over_http

COMPARED_HEADERS = (
    "content-type",
    "etag",
    "cache-control",
    "www-authenticate",
    "retry-after",
    "x-registry-stale",
    "x-registry-experiment",
    "x-registry-experiment-phase",
    "x-registry-variant",
    "x-registry-in-experiment",
)


def fast_path_of(app: Litestar) -> PromptFastPath:
    outer = app.asgi_handler
    assert isinstance(outer, RequestContextMiddleware)
    assert isinstance(outer.app, PromptFastPath)
    return outer.app


@pytest.fixture
async def slow(settings: Settings, client: AppClient) -> AsyncIterator[AppClient]:
    """The same service without the fast path, on the same database (``client`` has it)."""
    async with serve_in_process(create_app(settings.model_copy(update={"fast_path": False}))) as http:
        assert not isinstance(http.app.asgi_handler.app, PromptFastPath)  # type: ignore[attr-defined]
        yield http


@pytest.fixture
async def keys(client: Client, admin: Headers, make_key: KeyFactory) -> dict[str, Headers]:
    """Published prompts, a running experiment, and keys of each kind the cases use."""
    await create_config(client, admin, "small")
    await create_prompt(client, admin, "greet")
    await create_version(client, admin, "greet", "Hello {{ name }}!", config={"name": "small", "version": 1})
    await create_version(client, admin, "greet", "Hi {{ name }}, welcome back.")
    await create_version(
        client,
        admin,
        "greet",
        "{{ name | upper }}",
        input_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    )
    await promote(client, admin, "greet", 1)
    await promote(client, admin, "greet", 2, to="staging")
    await create_prompt(client, admin, "support/chat")
    await create_version(client, admin, "support/chat", kind="chat", messages=[{"role": "user", "content": "{{ q }}"}])
    await promote(client, admin, "support/chat", 1)
    await create_prompt(client, admin, "unpublished")
    await create_version(client, admin, "unpublished", "{{ 1 / 0 }}")
    metric = await client.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=admin)
    assert metric.status_code == 201, metric.text
    experiment = await client.post(
        "/v1/experiments",
        json={
            "key": "greet-test",
            "prompt": "greet",
            "primary_metric": "converted",
            "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
            "forced_variants": {"qa": "treatment"},
        },
        headers=admin,
    )
    assert experiment.status_code == 201, experiment.text
    assert (await client.post("/v1/experiments/greet-test/start", headers=admin)).status_code == 200
    return {
        "admin": admin,
        "reader": await make_key(Scope.READ, name="reader"),
        "writer": await make_key(Scope.WRITE, name="writer"),
        "forged": {"Authorization": admin["Authorization"][:-4] + "AAAA"},
        "none": {},
    }


def comparable(response: Any) -> tuple[int, Any, dict[str, str]]:
    body: Any = response.content
    if response.headers.get("content-type", "").endswith("json") and body:
        body = response.json()
        if isinstance(body, dict):
            body.pop("request_id", None)  # differs per request by design
    return response.status_code, body, {h: response.headers[h] for h in COMPARED_HEADERS if h in response.headers}


GREET = "/v1/prompts/greet"
RENDER = "/v1/prompts/greet/render"
RESOLVE_CASES: list[tuple[str, str, dict[str, str], bool]] = [
    # (key, path with query, extra headers, served by the fast path)
    ("reader", GREET, {}, True),
    ("reader", f"{GREET}?label=staging", {}, True),
    ("reader", f"{GREET}?label=latest", {}, True),
    ("reader", f"{GREET}?version=3", {}, True),
    ("reader", f"{GREET}?version=99", {}, True),
    ("reader", f"{GREET}?label=production&version=1", {}, True),
    ("reader", f"{GREET}?unit=qa", {}, True),
    ("reader", f"{GREET}?unit=user-7", {}, True),
    ("reader", f"{GREET}?unit=user-7&label=staging", {}, True),
    ("reader", f"{GREET}?unit=qa&utm_source=mail", {}, True),
    ("reader", "/v1/prompts/support%2Fchat", {}, True),
    ("reader", "/v1/prompts/nope", {}, True),
    ("reader", "/v1/prompts/no%2Fsuch", {}, True),
    ("reader", "/v1/prompts/caf%C3%A9%2Fno", {}, True),
    ("reader", "/v1/prompts/unpublished", {}, True),
    ("reader", f"{GREET}?label=bogus", {}, False),
    ("reader", f"{GREET}?version=0", {}, False),
    ("reader", f"{GREET}?version=two", {}, False),
    ("reader", f"{GREET}?version=", {}, False),
    ("reader", f"{GREET}?unit=", {}, False),
    ("reader", f"{GREET}?unit=user%207", {}, False),
    ("reader", f"{GREET}?unit=a&unit=b", {}, False),
    ("reader", f"{GREET}?unit=" + "u" * 257, {}, False),
    ("reader", f"{GREET}/", {}, False),
    ("reader", GREET, {"if-none-match": "*"}, True),
    ("reader", GREET, {"if-none-match": '"stale-etag"'}, True),
    ("writer", GREET, {}, True),
    ("forged", GREET, {}, True),
    ("none", GREET, {}, True),
    ("none", f"{GREET}?version=0", {}, False),
]
RENDER_CASES: list[tuple[str, str, bytes, bool]] = [
    ("reader", RENDER, b'{"variables": {"name": "Ada"}}', True),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "unit": "qa"}', True),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "unit": "user-3"}', True),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "unit": "user-3", "version": 3}', True),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "label": "staging"}', True),
    ("reader", RENDER, b'{"variables": {"name": 5}, "version": 3}', True),
    ("reader", RENDER, b'{"variables": {}, "version": 3}', True),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "label": "latest", "version": 1}', True),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "version": 42}', True),
    ("reader", RENDER, b"{}", True),
    ("reader", "/v1/prompts/support%2Fchat/render", b'{"variables": {"q": "why?"}}', True),
    ("reader", "/v1/prompts/unpublished/render", b'{"label": "latest"}', True),
    ("reader", "/v1/prompts/unpublished/render", b"{}", True),
    ("reader", "/v1/prompts/nope/render", b"{}", True),
    ("reader", "/v1/prompts/no%2Fsuch/render", b"{}", True),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "version": "2"}', False),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "colour": "red"}', False),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "unit": ""}', False),
    ("reader", RENDER, b'{"variables": {"name": "Ada"}, "unit": "a\\u0000b"}', False),
    ("reader", RENDER, b'{"variables": [1, 2]}', False),
    ("reader", RENDER, b'{"variables": ', False),
    ("reader", RENDER, b"[]", False),
    ("reader", RENDER, b"", False),
    ("writer", RENDER, b"{}", True),
    ("forged", RENDER, b"{}", True),
    ("none", RENDER, b"{}", True),
    ("none", RENDER, b"{", False),
]


async def test_resolve_answers_as_litestar_does(client: AppClient, slow: AppClient, keys: dict[str, Headers]) -> None:
    fast_path = fast_path_of(client.app)
    etag = (await client.get(GREET, headers=keys["reader"])).headers["etag"]
    cases = [*RESOLVE_CASES, ("reader", GREET, {"if-none-match": etag}, True)]
    cases.append(("reader", GREET, {"if-none-match": f'W/{etag}, "other"'}, True))
    for key, url, extra, served_fast in cases:
        headers = {**keys[key], **extra}
        before = fast_path.served
        fast = await client.get(url, headers=headers)
        assert fast_path.served - before == int(served_fast), (url, extra, fast.text)
        reference = await slow.get(url, headers=headers)
        assert comparable(fast) == comparable(reference), (key, url, extra)


async def test_render_answers_as_litestar_does(client: AppClient, slow: AppClient, keys: dict[str, Headers]) -> None:
    fast_path = fast_path_of(client.app)
    for key, url, body, served_fast in RENDER_CASES:
        headers = {**keys[key], "content-type": "application/json"}
        before = fast_path.served
        fast = await client.post(url, content=body, headers=headers)
        assert fast_path.served - before == int(served_fast), (url, body, fast.text)
        reference = await slow.post(url, content=body, headers=headers)
        assert comparable(fast) == comparable(reference), (key, url, body)


async def test_bodies_over_the_limit_are_handed_on_and_refused(
    client: AppClient, slow: AppClient, keys: dict[str, Headers]
) -> None:
    fast_path = fast_path_of(client.app)
    limit = client.app.state.runtime.settings.max_body_bytes
    body = b'{"variables": {"name": "' + b"x" * limit + b'"}}'
    for app in (client, slow):
        response = await app.post(RENDER, content=body, headers={**keys["reader"], "content-type": "application/json"})
        assert response.status_code == 413
    assert fast_path.served == 0


async def test_each_request_counts_once_against_the_rate_limit(
    settings: Settings, keys: dict[str, Headers], client: AppClient
) -> None:
    """Handing a request on to Litestar must not count it twice; errors found while serving count once."""
    limited = create_app(settings.model_copy(update={"rate_limit_per_minute": 4}))
    async with serve_in_process(limited) as http:
        reader = {**keys["reader"], "content-type": "application/json"}
        fast_path = fast_path_of(limited)
        assert (await http.post(RENDER, content=b'{"variables": {"name": "Ada"}}', headers=reader)).status_code == 200
        assert (await http.post("/v1/prompts/nope/render", content=b"{}", headers=reader)).status_code == 404
        assert (await http.post(RENDER, content=b'{"colour": 1}', headers=reader)).status_code == 422
        assert (await http.get(f"{GREET}?unit=qa", headers=reader)).status_code == 200
        assert fast_path.served == 3
        refused = await http.get(GREET, headers=reader)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert fast_path.served == 4  # the refusal itself is answered by the fast path
        assert (await http.post(RENDER, content=b"{", headers=reader)).status_code == 429


async def test_the_fast_path_is_counted_under_the_route_template(client: AppClient, keys: dict[str, Headers]) -> None:
    await client.get(GREET, headers=keys["reader"])
    await client.post(f"/v1/prompts/{path('support/chat')}/render", json={}, headers=keys["reader"])
    text = (await client.get("/metrics")).text
    assert 'registry_http_requests_total{method="GET",route="/v1/prompts/{name}",status="200"} 1.0' in text
    assert 'registry_http_requests_total{method="POST",route="/v1/prompts/{name}/render",status="422"} 1.0' in text


def test_the_app_refuses_to_start_if_the_routes_it_stands_in_for_moved(settings: Settings) -> None:
    app = create_app(settings)
    with pytest.raises(RuntimeError, match="resolvePrompt at /v2/prompts"):
        PromptFastPath.in_front_of(app, app.asgi_handler, app.state.runtime, "/v2")


async def test_a_body_sent_in_chunks_over_a_socket_is_read_whole(client: AppClient, keys: dict[str, Headers]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"variables": ', b'{"name": "Ada"}', b', "unit": "qa"}'):
            yield part

    fast_path = fast_path_of(client.app)
    async with serve_over_http(client.app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post(
            RENDER, content=chunks(), headers={**keys["reader"], "content-type": "application/json"}
        )
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "Hi Ada, welcome back."
    assert response.json()["experiment"]["variant"] == "treatment"
    assert fast_path.served == 1
