"""Prompts created through the API, as any client would, for the console tests to act on."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_prompt(api: httpx.AsyncClient, name: str, **fields: Any) -> None:
    response = await api.post("/v1/prompts", json={"name": name, **fields})
    assert response.status_code == 201, response.text


async def create_version(api: httpx.AsyncClient, name: str, template: str, **fields: Any) -> int:
    response = await api.post(
        f"/v1/prompts/{quote(name, safe='')}/versions", json={"kind": "text", "template": template, **fields}
    )
    assert response.status_code in (200, 201), response.text
    number: int = response.json()["version"]
    return number


async def promote(
    api: httpx.AsyncClient, name: str, version: int, to: str, expected: int | None, **fields: Any
) -> None:
    response = await api.post(
        f"/v1/prompts/{quote(name, safe='')}/versions/{version}/promote",
        json={"to": to, "expected_current": expected, **fields},
    )
    assert response.status_code == 200, response.text


async def states(api: httpx.AsyncClient, name: str) -> dict[int, str]:
    response = await api.get(f"/v1/prompts/{quote(name, safe='')}/versions")
    assert response.status_code == 200, response.text
    return {item["version"]: item["state"] for item in response.json()["items"]}


async def history(api: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/prompts/{quote(name, safe='')}/history")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def prompt_with_versions(api: httpx.AsyncClient, prefix: str, count: int, **fields: Any) -> str:
    """A prompt with ``count`` text versions, v1 in production."""
    name = unique(prefix)
    await create_prompt(api, name, **fields)
    for i in range(1, count + 1):
        await create_version(
            api, name, f"Hello {{{{ name }}}}, version {i}.\nSecond line.", commit_message=f"change {i}"
        )
    await promote(api, name, 1, "production", None)
    return name


async def prompt_on_fault_backend(api: httpx.AsyncClient, name: str, *, prices: tuple[float, float]) -> None:
    """A prompt in production whose model config runs on the fault server (three tokens per answer), priced."""
    config = unique("fault-config")
    assert (await api.post("/v1/configs", json={"name": config})).status_code == 201
    created = await api.post(
        f"/v1/configs/{config}/versions",
        json={
            "backend": "fault",
            "model": f"ok/{config}",
            "params": {"max_tokens": 8},
            "input_price_per_mtok": prices[0],
            "output_price_per_mtok": prices[1],
        },
    )
    assert created.status_code == 201, created.text
    promoted = await api.post(
        f"/v1/configs/{config}/versions/1/promote", json={"to": "production", "expected_current": None}
    )
    assert promoted.status_code == 200, promoted.text
    await create_prompt(api, name)
    await create_version(api, name, "Say hello to {{ who }}.", config={"name": config, "version": 1})
    await promote(api, name, 1, "production", None)


async def complete(api: httpx.AsyncClient, name: str, times: int) -> None:
    for _ in range(times):
        response = await api.post(f"/v1/prompts/{quote(name, safe='')}/complete", json={"variables": {"who": "Ada"}})
        assert response.status_code == 200, response.text
