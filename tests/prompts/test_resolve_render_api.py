"""The read fast path: resolve by label or version, ETags, render, limits, cache coherence."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from prompt_registry_client.templating import unsafe_constructs

from registry.app import create_app
from registry.auth.keys import Scope
from registry.lib.changes import Change
from registry.settings import Settings
from tests.api import Client, Headers, create_config, create_prompt, create_version, promote
from tests.conftest import KeyFactory, problem, serve_in_process
from tests.statements import statements_of_this_block
from tests.waiting import eventually_async

SANDBOX_CASES = json.loads((Path(__file__).parents[2] / "clients/python/tests/cases/sandbox.json").read_text())


async def published(
    client: Client, admin: Headers, name: str = "greeting", template: str = "Hello {{ name }}!"
) -> None:
    await create_prompt(client, admin, name, description="Says hello", tags=["demo"])
    await create_version(client, admin, name, template)
    await promote(client, admin, name, 1)


async def test_resolve_defaults_to_production(client: Client, admin: Headers) -> None:
    await published(client, admin)
    await create_version(client, admin, "greeting", "Draft {{ name }}")
    response = await client.get("/v1/prompts/greeting", headers=admin)
    assert response.status_code == 200
    body = response.json()
    assert body["labels"] == {"production": 1, "staging": None, "latest": 2}
    assert body["version"]["version"] == 1
    assert body["version"]["template"] == "Hello {{ name }}!"
    assert body["description"] == "Says hello"
    assert response.headers["etag"].startswith('"')


@pytest.mark.parametrize(
    ("params", "version"), [({"label": "latest"}, 2), ({"version": 2}, 2), ({"label": "staging"}, 2)]
)
async def test_resolve_by_label_or_version(
    client: Client, admin: Headers, params: dict[str, Any], version: int
) -> None:
    await published(client, admin)
    await create_version(client, admin, "greeting", "Draft {{ name }}")
    await promote(client, admin, "greeting", 2, "staging")
    body = (await client.get("/v1/prompts/greeting", params=params, headers=admin)).json()
    assert body["version"]["version"] == version


async def test_resolve_problems(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "empty")
    nothing = await client.get("/v1/prompts/empty", headers=admin)
    assert nothing.status_code == 404
    assert problem(nothing)["type"] == "/problems/label_not_set"
    both = await client.get("/v1/prompts/empty", params={"label": "latest", "version": 1}, headers=admin)
    assert both.status_code == 422
    bad_label = await client.get("/v1/prompts/empty", params={"label": "canary"}, headers=admin)
    assert bad_label.status_code == 422
    assert problem(bad_label)["errors"][0]["field"] == "label"


async def test_if_none_match_gives_304_until_something_changes(client: Client, admin: Headers) -> None:
    await published(client, admin)
    first = await client.get("/v1/prompts/greeting", headers=admin)
    etag = first.headers["etag"]
    unchanged = await client.get("/v1/prompts/greeting", headers={**admin, "If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    await create_version(client, admin, "greeting", "Hi {{ name }}")
    await promote(client, admin, "greeting", 2)
    changed = await client.get("/v1/prompts/greeting", headers={**admin, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["version"]["version"] == 2


async def test_render_text_reports_exactly_what_was_used(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting")
    await create_config(client, admin, "small")
    await create_version(client, admin, "greeting", "Hello {{ name }}!", config={"name": "small", "version": 1})
    await promote(client, admin, "greeting", 1)
    response = await client.post("/v1/prompts/greeting/render", json={"variables": {"name": "Ann"}}, headers=admin)
    assert response.status_code == 200
    assert response.json() == {
        "prompt": "greeting",
        "version": 1,
        "state": "production",
        "kind": "text",
        "text": "Hello Ann!",
        "messages": None,
        "config": {"name": "small", "version": 1, "model": "tiny"},
        "experiment": None,
    }


async def test_render_chat(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "assistant")
    messages = [{"role": "system", "content": "Be {{ tone }}."}, {"role": "user", "content": "{{ q }}"}]
    await create_version(client, admin, "assistant", kind="chat", messages=messages)
    response = await client.post(
        "/v1/prompts/assistant/render",
        json={"variables": {"tone": "brief", "q": "Why?"}, "label": "latest"},
        headers=admin,
    )
    assert response.json()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why?"},
    ]


async def test_render_lists_every_variable_problem(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "typed")
    schema = {
        "properties": {
            "name": {"type": "string", "maxLength": 5},
            "count": {"type": "integer"},
            "tone": {"enum": ["a", "b"]},
        },
        "required": ["name", "count"],
    }
    await create_version(
        client,
        admin,
        "typed",
        "{{ name }} {{ count }}{% if tone is defined %}{{ tone }}{% endif %}",
        input_schema=schema,
    )
    await promote(client, admin, "typed", 1)
    response = await client.post(
        "/v1/prompts/typed/render", json={"variables": {"name": "toolong", "tone": "c", "extra": 1}}, headers=admin
    )
    assert response.status_code == 422
    body = problem(response)
    assert body["type"] == "/problems/variables_invalid"
    assert sorted((e["field"], e["message"]) for e in body["errors"]) == [
        ("variables.count", "is required"),
        ("variables.extra", "is not an input of this prompt"),
        ("variables.name", "must have at most 5 characters, has 7"),
        ("variables.tone", "must be one of 'a', 'b'"),
    ]


@pytest.mark.parametrize(
    ("template", "variables", "reason"), [c[1:] for c in SANDBOX_CASES], ids=[c[0] for c in SANDBOX_CASES]
)
async def test_sandbox_escapes_are_refused_over_the_api(
    client: Client, admin: Headers, template: str, variables: dict[str, Any], reason: str
) -> None:
    await create_prompt(client, admin, "hostile")
    response = await client.post(
        "/v1/prompts/hostile/versions",
        json={"kind": "text", "template": template, "input_schema": {"additionalProperties": True}},
        headers=admin,
    )
    if unsafe_constructs(template):  # refused when saved; the client's tests render it to check the sandbox
        assert response.status_code == 422
        assert problem(response)["type"] == "/problems/template_invalid"
        return
    assert response.status_code == 201, response.text
    rendered = await client.post(
        "/v1/prompts/hostile/render", json={"variables": variables, "version": 1}, headers=admin
    )
    assert rendered.status_code == 422
    body = problem(rendered)
    assert body["type"] == "/problems/render_failed"
    assert body["reason"] == reason  # a count-based limit stopped it, not the time budget (render_timeout)
    assert "Traceback" not in rendered.text
    healthy = await client.get("/health")
    assert healthy.status_code == 200


async def test_oversized_output_fails_and_the_service_stays_responsive(client: Client, admin: Headers) -> None:
    schema = {"properties": {"n": {"type": "integer"}, "chunk": {"type": "string", "maxLength": 1000}}}
    await create_prompt(client, admin, "big")
    await create_version(client, admin, "big", "{% for i in range(n) %}{{ chunk }}{% endfor %}", input_schema=schema)
    big, health = await asyncio.gather(
        client.post(
            "/v1/prompts/big/render", json={"version": 1, "variables": {"n": 50_000, "chunk": "z" * 100}}, headers=admin
        ),
        client.get("/health"),
    )
    assert health.status_code == 200
    assert big.status_code == 422
    assert problem(big)["reason"] == "output_too_large"
    small = await client.post(
        "/v1/prompts/big/render", json={"version": 1, "variables": {"n": 3, "chunk": "ab"}}, headers=admin
    )
    assert small.json()["text"] == "ababab"


async def test_promotion_is_seen_by_the_next_render(client: Client, admin: Headers) -> None:
    await published(client, admin)
    before = await client.post("/v1/prompts/greeting/render", json={"variables": {"name": "A"}}, headers=admin)
    assert before.json()["text"] == "Hello A!"
    await create_version(client, admin, "greeting", "Bye {{ name }}!")
    await promote(client, admin, "greeting", 2)
    after = await client.post("/v1/prompts/greeting/render", json={"variables": {"name": "A"}}, headers=admin)
    assert after.json()["text"] == "Bye A!"
    rolled = await client.post("/v1/prompts/greeting/rollback", json={"reason": "too curt"}, headers=admin)
    assert rolled.status_code == 200
    again = await client.post("/v1/prompts/greeting/render", json={"variables": {"name": "A"}}, headers=admin)
    assert again.json()["text"] == "Hello A!"


async def test_a_promotion_on_one_replica_reaches_another_through_redis(
    client: Client, admin: Headers, settings: Settings
) -> None:
    await published(client, admin)
    other: Litestar = create_app(settings)
    async with serve_in_process(other) as replica:
        warm = await replica.post("/v1/prompts/greeting/render", json={"variables": {"name": "A"}}, headers=admin)
        assert warm.json()["version"] == 1
        await create_version(client, admin, "greeting", "Bye {{ name }}!")
        await promote(client, admin, "greeting", 2)

        async def sees_version_2() -> bool:
            seen = await replica.post("/v1/prompts/greeting/render", json={"variables": {"name": "A"}}, headers=admin)
            return bool(seen.json()["version"] == 2)

        # The replica caches for 300 s: only the change published through Redis can make it re-read.
        await eventually_async(sees_version_2, "the promotion reaching the other replica")


async def test_read_scope_resolves_and_renders_but_cannot_write(
    client: Client, admin: Headers, make_key: KeyFactory
) -> None:
    await published(client, admin)
    reader = await make_key(Scope.READ, name="checkout-app")
    assert (await client.get("/v1/prompts/greeting", headers=reader)).status_code == 200
    assert (
        await client.post("/v1/prompts/greeting/render", json={"variables": {"name": "x"}}, headers=reader)
    ).status_code == 200
    assert (
        await client.post("/v1/prompts/greeting/versions", json={"kind": "text", "template": "x"}, headers=reader)
    ).status_code == 403


async def test_a_cache_miss_costs_one_query_and_a_hit_none(client: Client, admin: Headers, app: Litestar) -> None:
    await published(client, admin)
    await client.get("/v1/keys", headers=admin)  # the key is verified and cached: its lookup is not counted below
    runtime = app.state.runtime
    with statements_of_this_block(runtime) as statements:
        runtime.prompts._on_change(Change("prompt", "greeting", "updated"))  # expire the cached copy
        await client.post("/v1/prompts/greeting/render", json={"variables": {"name": "A"}}, headers=admin)
        miss = list(statements)
        statements.clear()
        for _ in range(5):
            await client.post("/v1/prompts/greeting/render", json={"variables": {"name": "A"}}, headers=admin)
            await client.get("/v1/prompts/greeting", headers=admin)
    assert len(miss) == 1, miss
    assert statements == []
