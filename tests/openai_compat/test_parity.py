"""The same completions through ``/complete`` and through the OpenAI door: the same backend requests and records."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.prompts.catalog import Routing
from registry.prompts.schemas import ExperimentOut
from tests.completions.conftest import RegistryFactory, backend, publish, unique
from tests.completions.fault_server import FaultServer
from tests.openai_compat.conftest import AsyncFactory, SyncFactory

RECORDED = (
    "prompt, prompt_version, config, config_version, backend, model, experiment_key, experiment_phase, variant, unit, "
    "api_key_id, stream, status, error_type, finish_reason, input_tokens, output_tokens, cost, cached, fallback_used"
)


class HalfExperiment:
    """Units starting with "b" see variant "b" (version 1) of experiment "tone"; the others are outside it."""

    def route(self, prompt: str, unit: str) -> Routing | None:
        if unit.startswith("b"):
            return Routing(ExperimentOut(key="tone", phase=3, variant="b", in_experiment=True), version=1)
        return Routing(ExperimentOut(key="tone", phase=3, variant=None, in_experiment=False), version=None)


# (the prompt's kind, the /complete body besides variables, the same as OpenAI request fields)
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("chat", {}, {}),
    ("chat", {"stream": True}, {"stream": True}),
    ("chat", {"unit": "b-1", "user": "b-1"}, {"user": "b-1"}),
    ("chat", {"unit": "a-1", "stream": True}, {"extra_body": {"unit": "a-1"}, "stream": True}),
    (
        "chat",
        {"version": 1, "max_tokens": 2, "seed": 7},
        {"model": "prompt:greet@1", "max_completion_tokens": 2, "seed": 7},
    ),
    (
        "chat",
        {"label": "production", "user": "a-2", "unit": "a-2"},
        {"model": "prompt:greet@production", "user": "a-2"},
    ),
    ("text", {}, {}),
    ("text", {"stream": True, "max_tokens": 1}, {"stream": True, "max_tokens": 1}),
]


async def records(client: httpx.AsyncClient, admin: dict[str, str], engine: AsyncEngine) -> list[dict[str, Any]]:
    assert (await client.get("/v1/usage", headers=admin)).status_code == 200
    async with engine.connect() as connection:
        rows = await connection.execute(text(f"SELECT {RECORDED} FROM completions ORDER BY id"))
        return [dict(row._mapping) for row in rows.all()]


async def through_complete(client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any]) -> None:
    response = await client.post(
        "/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}, **body}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert "event: done" in response.text if body.get("stream") else response.json()["text"]


async def through_openai(openai_client: Any, kind: str, fields: dict[str, Any]) -> None:
    options = {**fields}
    options.setdefault("model", "prompt:greet")
    options["extra_body"] = {"variables": {"name": "Ada"}, **options.get("extra_body", {})}
    if kind == "chat":
        answer = await openai_client.chat.completions.create(messages=[], **options)
    else:
        answer = await openai_client.completions.create(prompt="", **options)
    if options.get("stream"):
        assert [chunk async for chunk in answer]


@pytest.mark.parametrize("kind", ["chat", "text"])
async def test_both_doors_send_the_same_backend_requests_and_record_the_same_completions(
    registry: RegistryFactory,
    fault: FaultServer,
    admin: dict[str, str],
    admin_engine: AsyncEngine,
    async_sdk: AsyncFactory,
    kind: str,
) -> None:
    client = await registry({"fault": backend(fault.url)}, router=HalfExperiment())  # type: ignore[attr-defined]
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, kind=kind, max_context_tokens=4096, prices=(1.5, 4.0))
    openai_client = async_sdk(client, admin)
    cases = [(complete, fields) for case_kind, complete, fields in CASES if case_kind == kind]

    for complete, fields in cases:
        await through_complete(client, admin, complete)
        await through_openai(openai_client, kind, fields)

    rows = await records(client, admin, admin_engine)
    assert len(rows) == 2 * len(cases)
    for number, (complete, _) in enumerate(cases):
        by_complete, by_openai = rows[2 * number], rows[2 * number + 1]
        assert by_openai == by_complete, complete
        assert by_openai["status"] == "ok"
        assert by_openai["cost"] > 0
    assert {row["variant"] for row in rows} == ({"b", None} if kind == "chat" else {None})
    sent = [seen.payload for seen in fault.seen(model) if seen.path != "/tokenize"]
    assert len(sent) == 2 * len(cases)
    for number in range(len(cases)):
        assert sent[2 * number + 1] == sent[2 * number]


async def test_both_doors_fall_back_and_share_the_cache_alike(
    registry: RegistryFactory,
    fault: FaultServer,
    closed_port_url: str,
    admin: dict[str, str],
    admin_engine: AsyncEngine,
    sdk: SyncFactory,
) -> None:
    client = await registry(
        {"fault": backend(fault.url), "down": backend(closed_port_url)}, completion_cache_ttl_seconds=60
    )
    spare = unique("ok")
    await publish(client, admin, backend="fault", model=spare, prompt=None, config="spare", params={"temperature": 0})
    await publish(
        client,
        admin,
        backend="down",
        model="anything",
        max_context_tokens=4096,
        params={"temperature": 0},
        fallback={"name": "spare", "version": 1},
    )
    openai_client = sdk(client, admin)
    request = {"model": "prompt:greet", "messages": [], "extra_body": {"variables": {"name": "Ada"}}}

    await through_complete(client, admin, {})
    fell_back = openai_client.chat.completions.create(**request)
    spare_direct = openai_client.chat.completions.create(
        model="config:spare@1", messages=[{"role": "user", "content": "Hi"}]
    )
    spare_again = openai_client.chat.completions.create(
        model="config:spare@1", messages=[{"role": "user", "content": "Hi"}]
    )

    rows = await records(client, admin, admin_engine)
    assert [(row["config"], row["fallback_used"], row["cached"]) for row in rows] == [
        ("spare", True, False),
        ("spare", True, False),  # a fallback's answer is not cached
        ("spare", False, False),
        ("spare", False, False),  # a config model has no prompt whose store_io lets the exact cache keep answers
    ]
    assert rows[1] == rows[0]
    assert fell_back.model_extra["registry"]["fallback_used"] is True  # type: ignore[index]
    assert spare_direct.model_extra["registry"]["cached"] is False  # type: ignore[index]
    assert spare_again.model_extra["registry"]["cached"] is False  # type: ignore[index]
    assert spare_again.choices[0].message.content == spare_direct.choices[0].message.content
    assert len(fault.seen(spare, "/v1/chat/completions")) == 4  # two fallbacks, two config requests


async def test_both_doors_share_the_exact_cache_of_a_prompt_that_stores_its_inputs_and_outputs(
    registry: RegistryFactory, fault: FaultServer, admin: dict[str, str], sdk: SyncFactory
) -> None:
    client = await registry({"fault": backend(fault.url)}, completion_cache_ttl_seconds=60)  # type: ignore[attr-defined]
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, params={"temperature": 0}, store_io=True)
    request = {"model": "prompt:greet", "messages": [], "extra_body": {"variables": {"name": "Ada"}}}

    await through_complete(client, admin, {})
    answered = sdk(client, admin).chat.completions.with_raw_response.create(**request)

    assert answered.parse().model_extra["registry"]["cached"] is True  # type: ignore[index]
    assert answered.headers["x-registry-cached"] == "true"
    assert len(fault.seen(model, "/v1/chat/completions")) == 1
