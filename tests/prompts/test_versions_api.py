"""Immutable, numbered prompt versions: validation, idempotency, config links, diffs."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api import Client, Headers, create_config, create_prompt, create_version
from tests.conftest import count_rows, problem


async def test_versions_are_numbered_from_one(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting")
    first = await create_version(client, admin, "greeting", "Hi {{ name }}")
    second = await create_version(client, admin, "greeting", "Hello {{ name }}", commit_message="warmer")
    assert (first["version"], second["version"]) == (1, 2)
    assert second["state"] == "draft"
    assert second["author"] == "admin"
    assert second["commit_message"] == "warmer"
    assert second["variables"] == ["name"]
    assert len(second["sha256"]) == 64


async def test_identical_content_returns_the_newest_version(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await create_prompt(client, admin, "greeting")
    first = await create_version(client, admin, "greeting", "Hi {{ name }}")
    response = await client.post(
        "/v1/prompts/greeting/versions",
        json={"kind": "text", "template": "Hi {{ name }}", "commit_message": "again"},
        headers=admin,
    )
    assert response.status_code == 200
    assert response.json()["version"] == first["version"]
    assert await count_rows(clean_database, "prompt_versions") == 1


async def test_same_content_as_an_older_version_is_a_new_version(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting")
    await create_version(client, admin, "greeting", "A {{ name }}")
    await create_version(client, admin, "greeting", "B {{ name }}")
    third = await create_version(client, admin, "greeting", "A {{ name }}")
    assert third["version"] == 3


async def test_chat_versions_keep_their_messages(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "assistant")
    messages = [{"role": "system", "content": "You are {{ persona }}."}, {"role": "user", "content": "{{ question }}"}]
    version = await create_version(client, admin, "assistant", kind="chat", messages=messages)
    assert version["kind"] == "chat"
    assert version["messages"] == messages
    assert version["template"] is None
    assert version["variables"] == ["persona", "question"]


@pytest.mark.parametrize(
    ("payload", "status", "field", "fragment"),
    [
        ({"kind": "text", "template": "Hello {{ name"}, 422, "template", "line 1"),
        ({"kind": "text", "template": "ok\n{% for x in y %}"}, 422, "template", "line 2"),
        ({"kind": "chat", "messages": [{"role": "user", "content": "{% if %}"}]}, 422, "messages[0]", "line 1"),
        ({"kind": "text"}, 422, "template", "required"),
        ({"kind": "chat"}, 422, "messages", "required"),
        (
            {"kind": "text", "template": "x", "messages": [{"role": "user", "content": "y"}]},
            422,
            "messages",
            "only allowed",
        ),
        ({"kind": "chat", "messages": [{"role": "wizard", "content": "y"}]}, 422, "messages[0].role", ""),
        ({"kind": "chat", "messages": []}, 422, "messages", ""),
        ({"kind": "poem", "template": "x"}, 422, "kind", ""),
        (
            {"kind": "text", "template": "{{ a }}", "input_schema": {"properties": {"a": {"type": "text"}}}},
            422,
            "input_schema",
            "unknown type",
        ),
        (
            {"kind": "text", "template": "{{ a }} {{ b }}", "input_schema": {"properties": {"a": {}}}},
            422,
            "template",
            "'b'",
        ),
        ({"kind": "text", "template": "{% include 'other' %}"}, 422, "template", "not supported"),
        ({"kind": "text", "template": "x" * 100_001}, 422, "template", "limit"),
        ({"kind": "text", "template": "x", "config": {"name": "missing", "version": 1}}, 422, "config", "no config"),
        (
            {"kind": "text", "template": "x", "config": {"name": "small", "version": 1, "label": "production"}},
            422,
            "config",
            "",
        ),
        ({"kind": "text", "template": "x", "commit_message": "m" * 1001}, 422, "commit_message", ""),
    ],
)
async def test_invalid_versions_are_refused_with_details_and_nothing_is_written(
    client: Client,
    admin: Headers,
    clean_database: AsyncEngine,
    payload: dict[str, Any],
    status: int,
    field: str,
    fragment: str,
) -> None:
    await create_prompt(client, admin, "greeting")
    await create_config(client, admin, "small")
    response = await client.post("/v1/prompts/greeting/versions", json=payload, headers=admin)
    assert response.status_code == status, response.text
    body = problem(response)
    assert any(e["field"] == field and fragment in e["message"] for e in body["errors"]), body
    assert await count_rows(clean_database, "prompt_versions") == 0
    prompt = (await client.get("/v1/prompts", headers=admin)).json()["items"][0]
    assert prompt["latest_version"] == 0


async def test_a_config_version_can_be_linked_by_number_or_label(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting")
    await create_config(client, admin, "small", input_price_per_mtok=0.5)
    by_number = await create_version(client, admin, "greeting", config={"name": "small", "version": 1})
    assert by_number["config"]["name"] == "small"
    assert by_number["config"]["version"] == 1
    assert by_number["config"]["input_price_per_mtok"] == 0.5
    response = await client.post(
        "/v1/prompts/greeting/versions",
        json={"kind": "text", "template": "other", "config": {"name": "small", "label": "production"}},
        headers=admin,
    )
    assert response.status_code == 422  # nothing is in production yet
    assert "no production version" in problem(response)["errors"][0]["message"]
    latest = await create_version(client, admin, "greeting", "other", config={"name": "small", "label": "latest"})
    assert latest["config"]["version"] == 1


async def test_list_and_get_versions(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting")
    for i in range(3):
        await create_version(client, admin, "greeting", f"v{i} {{{{ name }}}}")
    page = (await client.get("/v1/prompts/greeting/versions", params={"limit": 2}, headers=admin)).json()
    assert [v["version"] for v in page["items"]] == [3, 2]
    rest = (
        await client.get("/v1/prompts/greeting/versions", params={"cursor": page["next_cursor"]}, headers=admin)
    ).json()
    assert [v["version"] for v in rest["items"]] == [1]
    one = (await client.get("/v1/prompts/greeting/versions/2", headers=admin)).json()
    assert one["template"] == "v1 {{ name }}"
    missing = await client.get("/v1/prompts/greeting/versions/9", headers=admin)
    assert missing.status_code == 404
    assert problem(missing)["type"] == "/problems/prompt_version_not_found"


async def test_diff_shows_template_and_config_changes(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting")
    await create_config(client, admin, "small")
    second = await client.post(
        "/v1/configs/small/versions",
        json={"backend": "local", "model": "tiny", "params": {"temperature": 0.7, "max_tokens": 64}},
        headers=admin,
    )
    assert second.status_code == 201
    await create_version(client, admin, "greeting", "Hello {{ name }}\nBye", config={"name": "small", "version": 1})
    await create_version(client, admin, "greeting", "Hi {{ name }}\nBye", config={"name": "small", "version": 2})
    diff = (await client.get("/v1/prompts/greeting/diff", params={"from": 1, "to": 2}, headers=admin)).json()
    assert "-Hello {{ name }}" in diff["content_diff"]
    assert "+Hi {{ name }}" in diff["content_diff"]
    assert diff["config_from"]["version"] == 1
    assert diff["config_to"]["version"] == 2
    assert diff["config_changes"] == [{"field": "params.temperature", "before": 0.2, "after": 0.7}]


async def test_diff_needs_both_versions(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting")
    await create_version(client, admin, "greeting")
    response = await client.get("/v1/prompts/greeting/diff", params={"from": 1}, headers=admin)
    assert response.status_code == 422
    response = await client.get("/v1/prompts/greeting/diff", params={"from": 1, "to": 5}, headers=admin)
    assert response.status_code == 404


async def test_a_changed_last_line_without_a_newline_diffs_on_lines_of_its_own(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting")
    await create_version(client, admin, "greeting", "Hello {{ name }}\nBye")
    await create_version(client, admin, "greeting", "Hello {{ name }}\nSee you")

    diff = (await client.get("/v1/prompts/greeting/diff", params={"from": 1, "to": 2}, headers=admin)).json()

    assert diff["content_diff"].splitlines()[-5:] == [
        " Hello {{ name }}",
        "-Bye",
        "\\ No newline at end of file",
        "+See you",
        "\\ No newline at end of file",
    ]
