"""Datasets: immutable numbered versions from JSON, JSONL and CSV; exported as JSONL and CSV; 100,000 items."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.conftest import AppClient, KeyFactory, count_rows, problem

ITEMS: list[dict[str, Any]] = [
    {"variables": {"name": "Ada", "age": 36}, "expected": "Hello Ada", "tags": ["greeting"], "metadata": {"src": "a"}},
    {"variables": {"name": "Grace"}, "expected": None, "tags": [], "metadata": {}},
]


async def make_dataset(client: AppClient, headers: dict[str, str], name: str = "greetings") -> None:
    response = await client.post("/v1/evals/datasets", json={"name": name, "description": "d"}, headers=headers)
    assert response.status_code == 201, response.text


async def test_a_version_from_json_is_numbered_and_identical_items_create_nothing(
    client: AppClient, admin: dict[str, str]
) -> None:
    await make_dataset(client, admin)
    first = await client.post(
        "/v1/evals/datasets/greetings/versions", json={"items": ITEMS, "commit_message": "first"}, headers=admin
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["version"], body["item_count"], body["created_by"]) == (1, 2, "admin")
    again = await client.post("/v1/evals/datasets/greetings/versions", json={"items": ITEMS}, headers=admin)
    assert again.status_code == 200
    assert again.json()["sha256"] == body["sha256"]
    changed = await client.post("/v1/evals/datasets/greetings/versions", json={"items": ITEMS[:1]}, headers=admin)
    assert changed.json()["version"] == 2
    latest = await client.get("/v1/evals/datasets/greetings/versions/latest", headers=admin)
    assert latest.json()["item_count"] == 1
    items = await client.get("/v1/evals/datasets/greetings/versions/1/items", params={"limit": 1}, headers=admin)
    page = items.json()
    assert page["items"][0]["variables"] == {"name": "Ada", "age": 36}
    rest = await client.get(
        "/v1/evals/datasets/greetings/versions/1/items", params={"cursor": page["next_cursor"]}, headers=admin
    )
    assert [i["position"] for i in rest.json()["items"]] == [2]


async def test_jsonl_upload_and_export_round_trip(client: AppClient, admin: dict[str, str]) -> None:
    await make_dataset(client, admin)
    body = "\n".join(json.dumps(item) for item in ITEMS) + "\n\n"
    response = await client.post(
        "/v1/evals/datasets/greetings/versions",
        content=body,
        params={"commit_message": "from a file"},
        headers={**admin, "content-type": "application/x-ndjson"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["commit_message"] == "from a file"
    exported = await client.get("/v1/evals/datasets/greetings/versions/1/export", headers=admin)
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in exported.text.splitlines()] == ITEMS
    csv = await client.get("/v1/evals/datasets/greetings/versions/1/export", params={"format": "csv"}, headers=admin)
    assert csv.text.splitlines()[0] == "json.age,json.name,expected,tags,metadata"
    reimported = await client.post(
        "/v1/evals/datasets/greetings/versions", content=csv.text, headers={**admin, "content-type": "text/csv"}
    )
    assert reimported.status_code == 200, reimported.text  # the same items: the same version
    assert reimported.json()["version"] == 1


async def test_csv_columns_become_variables_expected_tags_and_metadata(
    client: AppClient, admin: dict[str, str]
) -> None:
    await make_dataset(client, admin)
    csv = 'var.name,json.count,expected,tags,metadata\nAda,3,"Hi, Ada","a,b","{""k"": 1}"\nBob,,,,\n'
    response = await client.post(
        "/v1/evals/datasets/greetings/versions", content=csv, headers={**admin, "content-type": "text/csv"}
    )
    assert response.status_code == 201, response.text
    items = (await client.get("/v1/evals/datasets/greetings/versions/1/items", headers=admin)).json()["items"]
    assert items[0] == {
        "position": 1,
        "variables": {"name": "Ada", "count": 3},
        "expected": "Hi, Ada",
        "tags": ["a", "b"],
        "metadata": {"k": 1},
    }
    assert items[1] == {"position": 2, "variables": {"name": "Bob"}, "expected": None, "tags": [], "metadata": {}}
    plain = "question,expected\nWhat?,That\n"
    response = await client.post(
        "/v1/evals/datasets/greetings/versions", content=plain, headers={**admin, "content-type": "text/csv"}
    )
    items = (await client.get("/v1/evals/datasets/greetings/versions/2/items", headers=admin)).json()["items"]
    assert items[0]["variables"] == {"question": "What?"}


async def test_a_broken_upload_names_its_lines_and_stores_nothing(
    client: AppClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await make_dataset(client, admin)
    response = await client.post(
        "/v1/evals/datasets/greetings/versions",
        content='{"variables": {}}\nnot json\n{"variables": 3}\n',
        headers={**admin, "content-type": "application/x-ndjson"},
    )
    body = problem(response)
    assert response.status_code == 422
    assert [e["field"] for e in body["errors"]] == ["line 2", "line 3"]
    assert await count_rows(clean_database, "eval_dataset_versions") == 0
    assert await count_rows(clean_database, "eval_dataset_items") == 0


async def test_reading_needs_read_and_creating_needs_write(client: AppClient, make_key: KeyFactory) -> None:
    reader = await make_key(Scope.READ, name="reader")
    writer = await make_key(Scope.WRITE, name="writer")
    assert (await client.post("/v1/evals/datasets", json={"name": "d"}, headers=reader)).status_code == 403
    assert (await client.post("/v1/evals/datasets", json={"name": "d"}, headers=writer)).status_code == 201
    assert (await client.get("/v1/evals/datasets/d", headers=reader)).status_code == 200
    missing = await client.get("/v1/evals/datasets/d/versions/latest", headers=reader)
    assert problem(missing)["type"] == "/problems/dataset_version_not_found"


async def test_a_version_of_100000_items_is_stored_and_exported(
    client: AppClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await make_dataset(client, admin)
    body = "".join(json.dumps({"variables": {"n": i}, "expected": str(i)}) + "\n" for i in range(100_000))
    response = await client.post(
        "/v1/evals/datasets/greetings/versions",
        content=body,
        headers={**admin, "content-type": "application/x-ndjson"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["item_count"] == 100_000
    assert await count_rows(clean_database, "eval_dataset_items") == 100_000
    over = body + json.dumps({"variables": {}}) + "\n"
    refused = await client.post(
        "/v1/evals/datasets/greetings/versions", content=over, headers={**admin, "content-type": "application/x-ndjson"}
    )
    assert refused.status_code == 422
    exported = await client.get("/v1/evals/datasets/greetings/versions/1/export", headers=admin)
    lines = exported.text.splitlines()
    assert len(lines) == 100_000
    assert json.loads(lines[-1])["variables"] == {"n": 99_999}
