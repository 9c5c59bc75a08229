"""Template safety over the API: save-time analysis, deep nesting and amplifying renders (issues 16 and 17)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api import Client, Headers, create_prompt, create_version
from tests.conftest import problem

UNSAFE = {
    "dunder attribute": ("{{ name.__class__ }}", "'name.__class__' reads an internal attribute"),
    "attr filter": ("Hi\n{{ name|attr('__globals__') }}", "line 2: '|attr('__globals__')'"),
    "list mutation": ("{% set l = [] %}{{ l.append(1) }}", "'l.append()' calls a method"),
    "str.format": ("{{ '{0.__class__}'.format(name) }}", "calls a method"),
}


@pytest.mark.parametrize(("template", "fragment"), UNSAFE.values(), ids=UNSAFE.keys())
async def test_saving_an_unsafe_template_is_refused_naming_line_and_construct(
    client: Client, admin: Headers, template: str, fragment: str
) -> None:
    await create_prompt(client, admin, "unsafe")
    response = await client.post(
        "/v1/prompts/unsafe/versions",
        json={"kind": "text", "template": template, "input_schema": {"additionalProperties": True}},
        headers=admin,
    )
    assert response.status_code == 422
    body = problem(response)
    assert body["type"] == "/problems/template_invalid"
    assert [e["field"] for e in body["errors"]] == ["template"]
    assert fragment in body["errors"][0]["message"]
    listed = await client.get("/v1/prompts/unsafe/versions", headers=admin)
    assert listed.json()["items"] == [], "nothing was stored, so nothing can be promoted"


async def test_an_unsafe_chat_message_is_refused_by_its_index(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "unsafe-chat")
    messages = [{"role": "system", "content": "ok"}, {"role": "user", "content": "{{ q }}\n{{ q.__init__ }}"}]
    response = await client.post(
        "/v1/prompts/unsafe-chat/versions", json={"kind": "chat", "messages": messages}, headers=admin
    )
    assert response.status_code == 422
    (error,) = problem(response)["errors"]
    assert error["field"] == "messages[1]"
    assert error["message"].startswith("line 2: 'q.__init__'")


DEEP = {
    "300 nested brackets": "{{ " + "(" * 300 + "x" + ")" * 300 + " }}",
    "500 nested ifs": "{% if x %}" * 500 + "y" + "{% endif %}" * 500,
    "5,000 chained filters": "{{ x" + "|trim" * 5000 + " }}",
}


@pytest.mark.parametrize("source", DEEP.values(), ids=DEEP.keys())
@pytest.mark.parametrize("kind", ["text", "chat"])
async def test_deeply_nested_templates_are_a_422_not_a_500(
    client: Client, admin: Headers, source: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await create_prompt(client, admin, "deep")
    payload: dict[str, Any] = (
        {"kind": "text", "template": source}
        if kind == "text"
        else {"kind": "chat", "messages": [{"role": "user", "content": source}]}
    )
    response = await client.post("/v1/prompts/deep/versions", json=payload, headers=admin)
    assert response.status_code == 422, response.text[:300]
    body = problem(response)
    assert body["type"] == "/problems/template_invalid"
    assert "nests too deeply" in body["errors"][0]["message"]
    logged = capsys.readouterr()
    assert "Traceback" not in logged.out + logged.err, "the refusal was logged with a traceback"


AMPLIFYING = {
    "indent with a long indent": "{{ ('a\n' * 20000)|indent('x' * 20000) }}",
    "tojson with a huge indent": "{{ ({'a': [{'b': 1}]})|tojson(indent=100000) }}",
    "wordwrap with a long wrapstring": "{{ ('aaaa ' * 20000)|wordwrap(10, wrapstring='x' * 20000) }}",
    "urlize with a long target": "{{ ('www.a.com ' * 20000)|urlize(target='x' * 20000) }}",
    "slice filled with a large string": "{{ [1]|slice(90000, fill_with='x' * 100000)|list }}",
    "printing a list repeating one large string": "{{ [1]|batch(2000, 'x' * 100000)|first }}",
    "tojson of a list repeating one large string": "{{ ([1]|batch(2000, 'x' * 100000)|first)|tojson }}",
}


@pytest.mark.parametrize("template", AMPLIFYING.values(), ids=AMPLIFYING.keys())
async def test_amplifying_templates_are_saved_and_refused_at_render_with_422(
    client: Client, admin: Headers, template: str
) -> None:
    await create_prompt(client, admin, "amplify")
    await create_version(client, admin, "amplify", template)
    response = await client.post("/v1/prompts/amplify/render", json={"version": 1, "variables": {}}, headers=admin)
    assert response.status_code == 422
    body = problem(response)
    assert body["type"] == "/problems/render_failed"
    assert body["reason"] in ("output_too_large", "render_limit")


FILTERS_WITH_CONTEXT = {
    "join": ("{{ items|join(', ') }}", {"items": ["a", "b"]}, "a, b"),
    "replace": ("{{ text|replace('a', 'b') }}", {"text": "aa"}, "bb"),
    "tojson": ("{{ items|tojson }}", {"items": ["a"]}, '["a"]'),
    "slice": ("{{ items|slice(2)|list }}", {"items": [1, 2, 3]}, "[[1, 2], [3]]"),
}


@pytest.mark.parametrize(("template", "variables", "expected"), FILTERS_WITH_CONTEXT.values(), ids=FILTERS_WITH_CONTEXT)
async def test_filters_that_take_jinjas_context_render(
    client: Client, admin: Headers, template: str, variables: dict[str, Any], expected: str
) -> None:
    await create_prompt(client, admin, "ctx")
    await create_version(client, admin, "ctx", template)
    response = await client.post("/v1/prompts/ctx/render", json={"version": 1, "variables": variables}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == expected


async def test_truncate_with_a_length_from_the_variables_below_its_ellipsis_is_a_422(
    client: Client, admin: Headers
) -> None:
    await create_prompt(client, admin, "short")
    schema = {"properties": {"text": {"type": "string"}, "n": {"type": "integer"}}}
    await create_version(client, admin, "short", "{{ text|truncate(n) }}", input_schema=schema)
    response = await client.post(
        "/v1/prompts/short/render", json={"version": 1, "variables": {"text": "hello world", "n": 1}}, headers=admin
    )
    assert response.status_code == 422
    body = problem(response)
    assert body["type"] == "/problems/render_failed"
    assert "expected length >= 3" in body["detail"]
