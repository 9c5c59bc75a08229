"""Prompts as resources: create, list, update; bad input never writes anything."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.api import Client, Headers, create_prompt, create_version
from tests.conftest import KeyFactory, count_rows, problem


async def test_create_prompt_returns_it(client: Client, admin: Headers) -> None:
    response = await client.post(
        "/v1/prompts",
        json={"name": "support/summarize", "description": "Summaries", "tags": ["b", "a", "a"]},
        headers=admin,
    )
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "support/summarize"
    assert body["tags"] == ["a", "b"]
    assert body["latest_version"] == 0
    assert body["created_by"] == body["updated_by"] == "admin"


async def test_duplicate_name_is_a_conflict(client: Client, admin: Headers, clean_database: AsyncEngine) -> None:
    await create_prompt(client, admin, "greeting")
    response = await client.post("/v1/prompts", json={"name": "greeting"}, headers=admin)
    assert response.status_code == 409
    assert problem(response)["type"] == "/problems/already_exists"
    assert await count_rows(clean_database, "prompts") == 1


@pytest.mark.parametrize(
    "name",
    ["Upper", "has space", "/leading", "trailing/", "double//slash", "ünicode", "x" * 129, "", "-dash-first", "a/../b"],
)
async def test_bad_names_are_refused_and_nothing_is_written(
    client: Client, admin: Headers, clean_database: AsyncEngine, name: str
) -> None:
    response = await client.post("/v1/prompts", json={"name": name}, headers=admin)
    assert response.status_code == 422
    body = problem(response)
    assert body["type"] == "/problems/validation_error"
    assert body["errors"][0]["field"] == "name"
    assert await count_rows(clean_database, "prompts") == 0
    assert await count_rows(clean_database, "audit_log") == 1  # only the key creation


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "ok", "tags": ["bad tag"]}, "tags[0]"),
        ({"name": "ok", "description": "x" * 2001}, "description"),
        ({"name": "ok", "unknown": 1}, "unknown"),
        ({"name": 5}, "name"),
    ],
)
async def test_invalid_fields_are_named(
    client: Client, admin: Headers, clean_database: AsyncEngine, payload: dict[str, object], field: str
) -> None:
    response = await client.post("/v1/prompts", json=payload, headers=admin)
    assert response.status_code == 422
    assert problem(response)["errors"][0]["field"] == field
    assert await count_rows(clean_database, "prompts") == 0


async def test_list_paginates_with_a_cursor(client: Client, admin: Headers) -> None:
    for name in ["c", "a", "b", "d", "e"]:
        await create_prompt(client, admin, name)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/prompts", params=params, headers=admin)).json()
        seen += [p["name"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["a", "b", "c", "d", "e"]


async def test_list_filters_by_tag_and_prefix(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "support/summarize", tags=["team-a"])
    await create_prompt(client, admin, "support/classify", tags=["team-b"])
    await create_prompt(client, admin, "sales/pitch", tags=["team-a"])
    by_prefix = (await client.get("/v1/prompts", params={"prefix": "support/"}, headers=admin)).json()
    assert [p["name"] for p in by_prefix["items"]] == ["support/classify", "support/summarize"]
    by_tag = (await client.get("/v1/prompts", params={"tag": "team-a"}, headers=admin)).json()
    assert [p["name"] for p in by_tag["items"]] == ["sales/pitch", "support/summarize"]


async def test_prefix_wildcards_are_literal(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "a_b")
    await create_prompt(client, admin, "axb")
    page = (await client.get("/v1/prompts", params={"prefix": "a_"}, headers=admin)).json()
    assert [p["name"] for p in page["items"]] == ["a_b"]


@pytest.mark.parametrize(
    ("params", "status"), [({"limit": 0}, 422), ({"limit": 10_000}, 422), ({"cursor": "%%%"}, 400)]
)
async def test_bad_paging_is_refused(client: Client, admin: Headers, params: dict[str, object], status: int) -> None:
    response = await client.get("/v1/prompts", params=params, headers=admin)
    assert response.status_code == status
    problem(response)


async def test_update_description_and_tags_is_audited(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "greeting", description="old")
    response = await client.patch("/v1/prompts/greeting", json={"description": "new", "tags": ["x"]}, headers=admin)
    assert response.status_code == 200
    assert response.json()["description"] == "new"
    audit = (await client.get("/v1/audit", params={"resource_name": "greeting"}, headers=admin)).json()["items"]
    update = next(e for e in audit if e["action"] == "prompt.update")
    assert update["before"]["description"] == "old"
    assert update["after"] == {"name": "greeting", "description": "new", "tags": ["x"]}


async def test_unknown_prompt_is_not_found(client: Client, admin: Headers) -> None:
    for method, url in [
        ("GET", "/v1/prompts/nope"),
        ("PATCH", "/v1/prompts/nope"),
        ("GET", "/v1/prompts/nope/versions"),
        ("GET", "/v1/prompts/nope/history"),
        ("POST", "/v1/prompts/nope/versions"),
        ("POST", "/v1/prompts/nope/render"),
    ]:
        body = {"kind": "text", "template": "x"} if url.endswith("versions") else {}
        response = await client.request(method, url, json=body if method != "GET" else None, headers=admin)
        assert response.status_code == 404, (method, url, response.text)
        assert problem(response)["type"] == "/problems/prompt_not_found"


async def test_names_with_slashes_work_in_every_route(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "a/b/c")
    await create_version(client, admin, "a/b/c")
    response = await client.get("/v1/prompts/a%2Fb%2Fc/versions/1", headers=admin)
    assert response.status_code == 200
    assert response.json()["prompt"] == "a/b/c"


async def test_write_scope_is_needed_to_create(
    client: Client, make_key: KeyFactory, clean_database: AsyncEngine
) -> None:
    reader = await make_key(Scope.READ)
    response = await client.post("/v1/prompts", json={"name": "x"}, headers=reader)
    assert response.status_code == 403
    assert problem(response)["type"] == "/problems/forbidden"
    assert await count_rows(clean_database, "prompts") == 0
