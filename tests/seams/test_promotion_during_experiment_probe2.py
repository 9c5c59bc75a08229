"""A version entering production while an experiment runs on the prompt: the variants must still serve its callers.

The start refuses an experiment whose variant cannot render what production's callers send; a promotion or a
rollback during the experiment changes what they send, and is judged the same way.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import problem
from tests.experiments.conftest import Client, make_experiment, make_metric, settle
from tests.rollouts.conftest import ok

ADA = {"name": "Ada"}


async def versions(client: Client, admin: dict[str, str], *templates: str) -> None:
    await ok(await client.post("/v1/prompts", json={"name": "greet"}, headers=admin), 201)
    for template in templates:
        body: dict[str, Any] = {"kind": "text", "template": template}
        await ok(await client.post("/v1/prompts/greet/versions", json=body, headers=admin), 201)
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post("/v1/prompts/greet/versions/1/promote", json=promote, headers=admin))
    await make_metric(client, admin, "converted")


async def production(client: Client, admin: dict[str, str]) -> int:
    number: int = (await ok(await client.get("/v1/prompts/greet", headers=admin)))["version"]["version"]
    return number


async def test_a_promotion_whose_callers_a_running_variant_would_refuse_is_refused_and_routing_goes_on(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await versions(client, admin, "v1 {{ name }}", "v2 {{ name }}", "v3 {{ name }} in {{ language }}")
    await make_experiment(client, admin, "tone", "greet")
    promote = {"to": "production", "expected_current": 1}
    response = await client.post("/v1/prompts/greet/versions/3/promote", json=promote, headers=admin)
    await settle(client)
    assert response.status_code == 409, response.text
    body = problem(response)
    assert body["type"].endswith("/experiment_conflict")
    assert "experiment 'tone'" in body["detail"]
    assert "refuses variable 'language', which production requires" in body["detail"]
    assert await production(client, admin) == 1
    render = {"variables": ADA, "unit": "u-1"}
    routed = await ok(await client.post("/v1/prompts/greet/render", json=render, headers=admin))
    assert routed["experiment"]["key"] == "tone"

    # Once the experiment stops, the same promotion goes through.
    await ok(await client.post("/v1/experiments/tone/stop", json={"reason": "done"}, headers=admin))
    await ok(await client.post("/v1/prompts/greet/versions/3/promote", json=promote, headers=admin))
    assert await production(client, admin) == 3


async def test_a_promotion_the_variants_can_serve_passes_while_the_experiment_runs(
    client: Client, admin: dict[str, str]
) -> None:
    await versions(client, admin, "v1 {{ name }}", "v2 {{ name }}", "v3, {{ name }}")
    await make_experiment(client, admin, "tone", "greet")
    promote = {"to": "production", "expected_current": 1}
    await ok(await client.post("/v1/prompts/greet/versions/3/promote", json=promote, headers=admin))
    assert await production(client, admin) == 3


async def test_a_rollback_to_a_version_whose_callers_a_running_variant_would_refuse_is_refused(
    client: Client, admin: dict[str, str]
) -> None:
    await versions(client, admin, "v1 {{ name }} in {{ language }}", "v2 {{ name }}", "v3 {{ name }}")
    promote = {"to": "production", "expected_current": 1}
    await ok(await client.post("/v1/prompts/greet/versions/2/promote", json=promote, headers=admin))
    variants = [{"key": "control", "prompt_version": 2}, {"key": "treatment", "prompt_version": 3}]
    await make_experiment(client, admin, "tone", "greet", variants=variants)
    response = await client.post("/v1/prompts/greet/rollback", json={"reason": "v2 is worse"}, headers=admin)
    assert response.status_code == 409, response.text
    assert "variant 'control' (version 2)" in problem(response)["detail"]
    assert await production(client, admin) == 2
