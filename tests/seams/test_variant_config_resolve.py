"""A unit routed to a variant that runs with its own model config: every route that answers for it names it."""

from __future__ import annotations

from typing import Any

from tests.experiments.conftest import Client, make_experiment, make_metric, settle
from tests.rollouts.conftest import ok


async def config(client: Client, admin: dict[str, str], name: str, model: str) -> None:
    await ok(await client.post("/v1/configs", json={"name": name}, headers=admin), 201)
    body = {"backend": "local", "model": model, "params": {"max_tokens": 8}}
    await ok(await client.post(f"/v1/configs/{name}/versions", json=body, headers=admin), 201)


async def prompt(client: Client, admin: dict[str, str]) -> None:
    await config(client, admin, "main", "small")
    await config(client, admin, "big", "large")
    await ok(await client.post("/v1/prompts", json={"name": "greet"}, headers=admin), 201)
    for template in ("v1 {{ x }}", "v2 {{ x }}"):
        body: dict[str, Any] = {"kind": "text", "template": template, "config": {"name": "main", "version": 1}}
        await ok(await client.post("/v1/prompts/greet/versions", json=body, headers=admin), 201)
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post("/v1/prompts/greet/versions/1/promote", json=promote, headers=admin))
    await make_metric(client, admin, "converted")


async def test_resolve_with_a_unit_names_the_variants_config_as_render_does(
    client: Client, admin: dict[str, str]
) -> None:
    await prompt(client, admin)
    variants = [
        {"key": "control", "prompt_version": 1},
        {"key": "treatment", "prompt_version": 2, "config": {"name": "big", "version": 1}},
    ]
    await make_experiment(client, admin, "sizes", "greet", variants=variants, forced_variants={"qa-t": "treatment"})
    await settle(client)
    render = {"variables": {"x": "1"}, "unit": "qa-t"}
    rendered = await ok(await client.post("/v1/prompts/greet/render", json=render, headers=admin))
    assert (rendered["version"], rendered["config"]["name"]) == (2, "big")
    resolved = await client.get("/v1/prompts/greet", params={"unit": "qa-t"}, headers=admin)
    assert resolved.headers["x-registry-variant"] == "treatment"
    body = resolved.json()
    assert (body["version"]["version"], body["version"]["config"]["name"]) == (2, "big")


async def test_a_copy_cached_for_the_versions_own_config_is_not_revalidated_for_the_variant(
    client: Client, admin: dict[str, str]
) -> None:
    await prompt(client, admin)
    variants = [
        {"key": "control", "prompt_version": 2},
        {"key": "treatment", "prompt_version": 2, "config": {"name": "big", "version": 1}},
    ]
    forced = {"qa-c": "control", "qa-t": "treatment"}
    await make_experiment(client, admin, "sizes", "greet", variants=variants, forced_variants=forced)
    await settle(client)
    own = await client.get("/v1/prompts/greet", params={"version": 2}, headers=admin)
    control = await client.get("/v1/prompts/greet", params={"unit": "qa-c"}, headers=admin)
    assert (control.headers["etag"], control.content) == (own.headers["etag"], own.content)
    assert control.json()["version"]["config"]["name"] == "main"

    cached = admin | {"If-None-Match": own.headers["etag"]}
    treatment = await client.get("/v1/prompts/greet", params={"unit": "qa-t"}, headers=cached)
    assert treatment.status_code == 200
    assert treatment.headers["etag"] != own.headers["etag"]
    assert treatment.json()["version"]["config"]["name"] == "big"
    assert {k: v for k, v in treatment.json()["version"].items() if k != "config"} == {
        k: v for k, v in own.json()["version"].items() if k != "config"
    }

    again = await client.get(
        "/v1/prompts/greet", params={"unit": "qa-t"}, headers=admin | {"If-None-Match": treatment.headers["etag"]}
    )
    assert (again.status_code, again.headers["etag"]) == (304, treatment.headers["etag"])
