"""Small helpers that drive the API the way a caller would."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

Client = httpx.AsyncClient
Headers = dict[str, str]


def path(name: str) -> str:
    return quote(name, safe="")


async def create_prompt(client: Client, headers: Headers, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/prompts", json={"name": name, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def create_version(
    client: Client, headers: Headers, name: str, template: str = "Hello {{ name }}", **fields: Any
) -> dict[str, Any]:
    payload = {"kind": "text", "template": template, **fields}
    if payload["kind"] == "chat":
        payload.pop("template")
    response = await client.post(f"/v1/prompts/{path(name)}/versions", json=payload, headers=headers)
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def promote(
    client: Client, headers: Headers, name: str, version: int, to: str = "production", **fields: Any
) -> dict[str, Any]:
    payload = {"to": to, **fields}
    if to in ("production", "staging") and "expected_current" not in payload:
        current = await client.get(f"/v1/prompts/{path(name)}/versions", params={"state": to}, headers=headers)
        items = current.json()["items"]
        payload["expected_current"] = items[0]["version"] if items else None
    response = await client.post(f"/v1/prompts/{path(name)}/versions/{version}/promote", json=payload, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def create_config(client: Client, headers: Headers, name: str, **version_fields: Any) -> dict[str, Any]:
    response = await client.post("/v1/configs", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    payload = {"backend": "local", "model": "tiny", "params": {"temperature": 0.2, "max_tokens": 64}, **version_fields}
    response = await client.post(f"/v1/configs/{path(name)}/versions", json=payload, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body
