"""Fixtures for guards: the completion fixtures (the registry on a real port, the stand-in and CPU backends)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import RegistryFactory, backend, fault, registry
from tests.completions.fault_server import FaultServer

__all__ = ["fault", "registry"]


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def config_version(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, body: dict[str, Any], *, create: bool = True
) -> int:
    """A config version made and promoted to production; its number."""
    if create:
        await ok(await client.post("/v1/configs/", json={"name": name}, headers=headers))
    number = (await ok(await client.post(f"/v1/configs/{name}/versions", json=body, headers=headers)))["version"]
    promote = {"to": "production", "expected_current": None if number == 1 else number - 1}
    await ok(await client.post(f"/v1/configs/{name}/versions/{number}/promote", json=promote, headers=headers))
    return int(number)


async def prompt_on(
    client: httpx.AsyncClient, headers: dict[str, str], name: str, config: str, version: int, template: str
) -> None:
    """A chat prompt in production, linked to the config version."""
    await ok(await client.post("/v1/prompts/", json={"name": name}, headers=headers))
    content = {"kind": "chat", "messages": [{"role": "user", "content": template}]}
    body = {**content, "config": {"name": config, "version": version}}
    await ok(await client.post(f"/v1/prompts/{name}/versions", json=body, headers=headers))
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/prompts/{name}/versions/1/promote", json=promote, headers=headers))


async def guarded(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    model: str,
    guards: list[dict[str, Any]],
    template: str = "Answer {{ question }}",
    **config: Any,
) -> None:
    """Config ``cfg`` (stand-in backend, ``model``, ``guards``) and prompt ``ask`` on it, both in production."""
    body = {"backend": "fault", "model": model, "params": {"max_tokens": 50}, "guards": guards, **config}
    number = await config_version(client, headers, "cfg", body)
    await prompt_on(client, headers, "ask", "cfg", number, template)


async def records(client: httpx.AsyncClient, headers: dict[str, str], engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every completion record, oldest first (GET /v1/usage writes the buffer first)."""
    assert (await client.get("/v1/usage", headers=headers)).status_code == 200
    query = text(
        "SELECT prompt, status, error_type, input_tokens, output_tokens, fallback_used, config, "
        "guard_outcomes, guard_blocked, guard_flagged FROM completions ORDER BY id"
    )
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in (await connection.execute(query)).all()]


@pytest.fixture
async def client(registry: RegistryFactory, fault: FaultServer) -> httpx.AsyncClient:
    url = fault.url  # type: ignore[attr-defined]
    return await registry({"fault": backend(url), "flaky": backend(url, max_retries=0)})
