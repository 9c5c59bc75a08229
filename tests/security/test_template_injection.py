"""Server-side template injection payloads over the API, beyond clients/python/tests/cases/sandbox.json.

Each payload is refused when the version is created or fails at render with a 4xx
problem, and no response carries the environment, the settings or internals. A case
whose last field is a string is harmless by construction and must render exactly it
(e.g. a namespace key spelled ``__class__`` is a dict key, not the attribute).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.settings import Settings
from tests.api import Client, Headers, create_prompt
from tests.conftest import problem

CASES = json.loads((Path(__file__).parent / "cases/template_injection.json").read_text())
CANARY = "canary-7f3a9c1e5b"


@pytest.fixture(autouse=True)
def canary_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_CANARY_SECRET", CANARY)
    monkeypatch.setenv("CANARY_SECRET", CANARY)


def assert_no_leak(text: str, settings: Settings) -> None:
    database = settings.database_url.rsplit("/", 1)[-1]
    for secret in (CANARY, settings.database_url, database, "postgres@", "Traceback", "/etc/passwd:", "root:x:0"):
        assert secret not in text


@pytest.mark.parametrize(("template", "variables", "harmless"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_injection_is_refused_or_fails_cleanly(
    client: Client, admin: Headers, settings: Settings, template: str, variables: dict[str, Any], harmless: str | None
) -> None:
    await create_prompt(client, admin, "hostile")
    created = await client.post(
        "/v1/prompts/hostile/versions",
        json={"kind": "text", "template": template, "input_schema": {"additionalProperties": True}},
        headers=admin,
    )
    assert_no_leak(created.text, settings)
    if created.status_code == 422:
        problem(created)
        return
    assert created.status_code == 201, created.text
    rendered = await client.post(
        "/v1/prompts/hostile/render", json={"variables": variables, "version": 1}, headers=admin
    )
    if harmless is not None:
        assert rendered.json()["text"] == harmless
        return
    assert 400 <= rendered.status_code < 500, rendered.text
    assert problem(rendered)["type"] == "/problems/render_failed"
    # Stopped by the sandbox or a count-based limit, not by running into the wall-time budget.
    assert problem(rendered)["reason"] != "render_timeout"
    assert_no_leak(rendered.text, settings)
