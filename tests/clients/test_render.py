"""A local render gives exactly what the service's render endpoint gives: output, versions, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prompt_registry_client import CachePolicy, RegistryClient, RenderFailed, VariablesInvalid

from tests.clients.conftest import Live, text

CASES = json.loads((Path(__file__).parents[2] / "clients/python/tests/cases/render.json").read_text())
BAD_VARIABLES: list[tuple[str, dict[str, Any]]] = [
    ("missing", {}),
    ("wrong type", {"name": 3, "count": 2}),
    ("unexpected", {"name": "Ann", "count": 2, "nme": "typo"}),
    ("below the minimum", {"name": "Ann", "count": 0}),
]


def as_service_renders(rendered: Any) -> dict[str, Any]:
    """A local ``RenderedPrompt`` in the shape of the service's render response."""
    config = rendered.config
    return {
        "prompt": rendered.prompt,
        "version": rendered.version,
        "state": rendered.state,
        "kind": rendered.kind,
        "text": rendered.text,
        "messages": [{"role": m.role, "content": m.content} for m in rendered.messages] if rendered.messages else None,
        "config": {"name": config.name, "version": config.version, "model": config.model} if config else None,
        "experiment": None,
    }


def test_local_renders_equal_the_services_for_every_render_case(live: Live) -> None:
    live.ok(live.admin.post("/v1/configs", json={"name": "small"}))
    live.ok(live.admin.post("/v1/configs/small/versions", json={"backend": "local", "model": "tiny"}))
    for index, (_, content, _, _) in enumerate(CASES):
        live.prompt(f"case-{index}", {**content, "config": {"name": "small", "version": 1}})
    with RegistryClient(live.url, live.key, cache=CachePolicy(watch_changes=False)) as registry:
        for index, (description, _, variables, _) in enumerate(CASES):
            served = live.ok(live.admin.post(f"/v1/prompts/case-{index}/render", json={"variables": variables}))
            local = registry.render(f"case-{index}", variables)
            assert as_service_renders(local) == served, description


def test_local_variable_errors_equal_the_services(live: Live) -> None:
    schema = {
        "properties": {"name": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
        "required": ["name", "count"],
    }
    live.prompt("counted", {**text("{{ name }} x{{ count }}"), "input_schema": schema})
    with RegistryClient(live.url, live.key, cache=CachePolicy(watch_changes=False)) as registry:
        for description, variables in BAD_VARIABLES:
            served = live.admin.post("/v1/prompts/counted/render", json={"variables": variables})
            with pytest.raises(VariablesInvalid) as caught:
                registry.render("counted", variables)
            assert served.status_code == 422, description
            assert caught.value.errors == served.json()["errors"], description
            assert caught.value.detail == served.json()["detail"], description


def test_a_sandbox_refusal_is_render_failed_with_its_reason_locally_and_remotely(live: Live) -> None:
    # The attribute's name comes from the variables: a constant one is refused when the version is saved.
    live.prompt("hostile", {**text("{{ ''|attr(name) }}"), "input_schema": {"additionalProperties": True}})
    variables = {"name": "__class__"}
    with RegistryClient(live.url, live.key, cache=CachePolicy(watch_changes=False)) as registry:
        with pytest.raises(RenderFailed) as local:
            registry.render("hostile", variables)
        with pytest.raises(RenderFailed) as remote:
            registry.request("POST", "/v1/prompts/hostile/render", json={"variables": variables})
    assert local.value.reason == remote.value.reason
