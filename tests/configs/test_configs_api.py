"""Model configs: validated, immutable versions with the same promotion flow as prompts."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api import Client, Headers, create_config
from tests.conftest import count_rows, problem

VALID = {"backend": "local", "model": "tiny", "params": {"temperature": 0.2, "max_tokens": 64}}


async def test_config_versions_store_params_and_prices(client: Client, admin: Headers) -> None:
    version = await create_config(
        client,
        admin,
        "small",
        params={
            "temperature": 0,
            "top_p": 0.9,
            "top_k": 40,
            "max_tokens": 128,
            "stop": ["\n\n"],
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": -0.1,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                },
            },
            "extra": {"repetition_penalty": 1.1, "min_p": 0.05},
        },
        input_price_per_mtok=0.15,
        output_price_per_mtok=0.6,
        max_context_tokens=512,
    )
    assert version["version"] == 1
    assert version["params"]["top_k"] == 40
    assert version["params"]["extra"] == {"repetition_penalty": 1.1, "min_p": 0.05}
    assert version["output_price_per_mtok"] == 0.6
    assert version["max_context_tokens"] == 512


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"params": {"temperature": 3}}, "params.temperature"),
        ({"params": {"top_p": 0}}, "params.top_p"),
        ({"params": {"top_k": -2}}, "params.top_k"),
        ({"params": {"max_tokens": 0}}, "params.max_tokens"),
        ({"params": {"stop": ["x"] * 17}}, "params.stop"),
        ({"params": {"presence_penalty": 2.5}}, "params.presence_penalty"),
        ({"params": {"extra": {"model": "other"}}}, "params.extra.model"),
        ({"params": {"extra": {"stream": True}}}, "params.extra.stream"),
        ({"params": {"response_format": {"type": "json_schema"}}}, "params.response_format.json_schema"),
        (
            {
                "params": {
                    "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": 5}}}
                }
            },
            "params.response_format.json_schema.schema",
        ),
        ({"params": {"response_format": {"type": "yaml"}}}, "params.response_format.type"),
        ({"params": {"unknown": 1}}, "params.unknown"),
        ({"input_price_per_mtok": -1}, "input_price_per_mtok"),
        ({"backend": "Has Space"}, "backend"),
        ({"model": ""}, "model"),
    ],
)
async def test_invalid_config_versions_are_refused(
    client: Client, admin: Headers, clean_database: AsyncEngine, change: dict[str, Any], field: str
) -> None:
    await client.post("/v1/configs", json={"name": "small"}, headers=admin)
    payload = {**VALID, **change}
    if "params" in change:
        payload["params"] = {**VALID["params"], **change["params"]}
    response = await client.post("/v1/configs/small/versions", json=payload, headers=admin)
    assert response.status_code == 422, response.text
    assert problem(response)["errors"][0]["field"] == field
    assert await count_rows(clean_database, "model_config_versions") == 0


async def test_identical_config_content_is_idempotent(client: Client, admin: Headers) -> None:
    await create_config(client, admin, "small")
    again = await client.post("/v1/configs/small/versions", json={**VALID, "commit_message": "same"}, headers=admin)
    assert again.status_code == 200
    assert again.json()["version"] == 1


async def test_config_promotion_rollback_history_and_diff(client: Client, admin: Headers) -> None:
    await create_config(client, admin, "small")
    second = await client.post(
        "/v1/configs/small/versions", json={**VALID, "params": {"temperature": 0.9, "max_tokens": 64}}, headers=admin
    )
    assert second.status_code == 201
    for number, expected in [(1, None), (2, 1)]:
        promoted = await client.post(
            f"/v1/configs/small/versions/{number}/promote",
            json={"to": "production", "expected_current": expected},
            headers=admin,
        )
        assert promoted.status_code == 200, promoted.text
    resolved = (await client.get("/v1/configs/small", headers=admin)).json()
    assert (resolved["version"], resolved["state"]) == (2, "production")
    rolled = await client.post("/v1/configs/small/rollback", json={"reason": "too random"}, headers=admin)
    assert rolled.json()["version"] == 1
    history = (await client.get("/v1/configs/small/history", headers=admin)).json()["items"]
    assert history[0]["action"] == "rollback"
    diff = (await client.get("/v1/configs/small/diff", params={"from": 1, "to": 2}, headers=admin)).json()
    assert diff["changes"] == [{"field": "params.temperature", "before": 0.2, "after": 0.9}]
    stale = await client.post(
        "/v1/configs/small/versions/2/promote", json={"to": "staging", "expected_current": 2}, headers=admin
    )
    assert stale.status_code == 409
    assert problem(stale)["type"] == "/problems/stale_expected_current"


async def test_unknown_config_problems(client: Client, admin: Headers) -> None:
    missing = await client.get("/v1/configs/nope", headers=admin)
    assert missing.status_code == 404
    assert problem(missing)["type"] == "/problems/config_not_found"
    await create_config(client, admin, "small")
    no_version = await client.get("/v1/configs/small/versions/7", headers=admin)
    assert problem(no_version)["type"] == "/problems/config_version_not_found"
    no_label = await client.get("/v1/configs/small", headers=admin)
    assert problem(no_label)["type"] == "/problems/label_not_set"
