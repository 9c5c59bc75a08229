"""The OpenAI-compatible endpoints as the official SDK calls them, sync and async, streamed and not."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from registry.prompts.catalog import Routing
from registry.prompts.schemas import ExperimentOut
from tests.completions.conftest import RegistryFactory, backend, finished, publish, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import KeyFactory
from tests.openai_compat.conftest import AsyncFactory, SyncFactory

VARIABLES = {"variables": {"name": "Ada"}}
TURN = {"role": "user", "content": "And in French?"}


@pytest.fixture
async def published(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    """Prompt "greet" (chat, one user message) on config "cfg" of the stand-in backend."""
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096, prices=(1.0, 3.0))
    return model


async def records(client: httpx.AsyncClient, admin: dict[str, str], engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every usage record, oldest first (GET /v1/usage writes the buffer first)."""
    assert (await client.get("/v1/usage", headers=admin)).status_code == 200
    query = text(
        "SELECT prompt, prompt_version, config, config_version, experiment_key, variant, unit, stream, status, "
        "error_type, input_tokens, output_tokens, cost, cached, fallback_used FROM completions ORDER BY id"
    )
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in (await connection.execute(query)).all()]


# -- chat completions of a prompt


async def test_chat_completion_of_a_prompt_runs_its_messages_then_the_callers(
    client: httpx.AsyncClient, published: str, admin: dict[str, str], fault: FaultServer, sdk: SyncFactory
) -> None:
    openai_client = sdk(client, admin)

    raw = openai_client.chat.completions.with_raw_response.create(
        model="prompt:greet", messages=[TURN], extra_body=VARIABLES
    )
    completion = raw.parse()

    assert completion.object == "chat.completion"
    assert completion.model == "prompt:greet"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello from the"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 3)
    assert completion.usage.total_tokens == 10
    facts = completion.model_extra["registry"]  # type: ignore[index]
    assert facts == {
        "prompt": "greet",
        "version": 1,
        "config": {"name": "cfg", "version": 1, "backend": "fault", "model": published},
        "experiment": None,
        "fallback_used": False,
        "cached": False,
        "cost": pytest.approx((7 * 1.0 + 3 * 3.0) / 1e6),
    }
    assert raw.headers["x-registry-prompt"] == "greet"
    assert raw.headers["x-registry-prompt-version"] == "1"
    assert raw.headers["x-registry-config"] == "cfg"
    assert raw.headers["x-registry-config-version"] == "1"
    assert raw.headers["x-registry-cached"] == "false"
    assert raw.headers["x-registry-fallback-used"] == "false"
    assert float(raw.headers["x-registry-cost"]) == pytest.approx(facts["cost"])
    sent = fault.seen(published, CHAT)[0].payload
    assert sent["messages"] == [{"role": "user", "content": "Say hello to Ada."}, TURN]


async def test_streamed_chat_completion_sends_chunks_usage_and_done(
    client: httpx.AsyncClient, published: str, admin: dict[str, str], sdk: SyncFactory
) -> None:
    openai_client = sdk(client, admin)

    with openai_client.chat.completions.with_streaming_response.create(
        model="prompt:greet",
        messages=[TURN],
        stream=True,
        stream_options={"include_usage": True},
        extra_body=VARIABLES,
    ) as response:
        headers = response.headers
        chunks = list(response.parse())

    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 3)
    facts = chunks[-2].model_extra["registry"]  # type: ignore[index]
    assert facts["prompt"] == "greet"
    assert facts["cost"] == pytest.approx((7 * 1.0 + 3 * 3.0) / 1e6)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-registry-prompt"] == "greet"
    assert headers["x-registry-config"] == "cfg"
    assert "x-registry-cost" not in headers  # known at the end: in the last chunk


async def test_stream_without_include_usage_has_no_usage_chunk(
    client: httpx.AsyncClient, published: str, admin: dict[str, str], sdk: SyncFactory
) -> None:
    stream = sdk(client, admin).chat.completions.create(
        model="prompt:greet", messages=[], stream=True, extra_body=VARIABLES
    )
    chunks = list(stream)

    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_async_client_runs_chat_completions_streamed_and_not(
    client: httpx.AsyncClient, published: str, admin: dict[str, str], async_sdk: AsyncFactory
) -> None:
    async with async_sdk(client, admin) as openai_client:
        completion = await openai_client.chat.completions.create(
            model="prompt:greet@1", messages=[TURN], extra_body=VARIABLES
        )
        stream = await openai_client.chat.completions.create(
            model="prompt:greet@production",
            messages=[TURN],
            stream=True,
            stream_options={"include_usage": True},
            extra_body=VARIABLES,
        )
        chunks = [chunk async for chunk in stream]

    assert completion.choices[0].message.content == "Hello from the"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 10


async def test_text_prompt_runs_on_the_completions_endpoint_with_the_callers_text_after_it(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, async_sdk: AsyncFactory
) -> None:
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, kind="text", template="Once upon a {{ name }}")

    async with async_sdk(client, admin) as openai_client:
        completion = await openai_client.completions.create(
            model="prompt:greet", prompt=", there was", extra_body={"variables": {"name": "time"}}
        )
        stream = await openai_client.completions.create(
            model="prompt:greet", prompt="", stream=True, extra_body={"variables": {"name": "time"}}
        )
        chunks = [chunk async for chunk in stream]

    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Hello from the"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert "".join(chunk.choices[0].text for chunk in chunks) == "Hello from the"
    assert chunks[-1].choices[0].finish_reason == "stop"
    sent = [seen.payload["prompt"] for seen in fault.seen(model, "/v1/completions")]
    assert sent == ["Once upon a time, there was", "Once upon a time"]


@pytest.mark.parametrize(
    ("endpoint", "prompt_kind", "what"),
    [("chat", "text", "text prompt"), ("text", "chat", "chat prompt")],
    ids=["text prompt on chat", "chat prompt on completions"],
)
async def test_a_prompt_runs_only_on_the_endpoint_of_its_kind(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    fault: FaultServer,
    endpoint: str,
    prompt_kind: str,
    what: str,
    sdk: SyncFactory,
) -> None:
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, kind=prompt_kind)
    openai_client = sdk(client, admin)

    def run() -> object:
        if endpoint == "chat":
            return openai_client.chat.completions.create(model="prompt:greet", messages=[TURN], extra_body=VARIABLES)
        return openai_client.completions.create(model="prompt:greet", prompt="", extra_body=VARIABLES)

    with pytest.raises(openai.UnprocessableEntityError) as raised:
        run()

    assert raised.value.code == "prompt_kind_mismatch"
    assert what in raised.value.message
    assert fault.seen(model) == []


# -- a config without a prompt


async def test_config_model_sends_the_callers_messages_to_that_config(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine, sdk: SyncFactory
) -> None:
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, prompt=None, prices=(2.0, 4.0))
    messages = [{"role": "system", "content": "Be brief."}, TURN]

    raw = sdk(client, admin).chat.completions.with_raw_response.create(model="config:cfg", messages=messages)
    completion = raw.parse()

    assert completion.choices[0].message.content == "Hello from the"
    facts = completion.model_extra["registry"]  # type: ignore[index]
    assert facts["prompt"] is None
    assert facts["version"] is None
    assert facts["config"] == {"name": "cfg", "version": 1, "backend": "fault", "model": model}
    assert facts["cost"] == pytest.approx((7 * 2.0 + 3 * 4.0) / 1e6)
    assert "x-registry-prompt" not in raw.headers
    assert raw.headers["x-registry-config"] == "cfg"
    sent = fault.seen(model, CHAT)[0].payload
    assert sent["messages"] == messages
    assert sent["max_tokens"] == 8  # the config's params apply
    [record] = await records(client, admin, admin_engine)
    assert (record["prompt"], record["prompt_version"]) == ("", None)
    assert (record["config"], record["config_version"], record["status"]) == ("cfg", 1, "ok")
    assert (record["input_tokens"], record["output_tokens"]) == (7, 3)


async def test_config_model_by_label_and_version(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, sdk: SyncFactory
) -> None:
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, prompt=None)
    openai_client = sdk(client, admin)

    by_version = openai_client.completions.create(model="config:cfg@1", prompt="Once")
    with pytest.raises(openai.NotFoundError) as no_staging:
        openai_client.completions.create(model="config:cfg@staging", prompt="Once")
    with pytest.raises(openai.NotFoundError) as no_version:
        openai_client.completions.create(model="config:cfg@2", prompt="Once")

    assert by_version.choices[0].text == "Hello from the"
    assert (no_staging.value.code, no_staging.value.type) == ("model_not_found", "label_not_set")
    assert (no_version.value.code, no_version.value.type) == ("model_not_found", "config_version_not_found")
    assert [seen.payload["prompt"] for seen in fault.seen(model, "/v1/completions")] == ["Once"]


# -- models


async def test_models_lists_prompts_and_configs_in_production(
    client: httpx.AsyncClient, admin: dict[str, str], make_key: KeyFactory, sdk: SyncFactory
) -> None:
    await publish(client, admin, backend="fault", model=unique("ok"))
    await publish(client, admin, backend="fault", model=unique("ok"), config="other", prompt=None)
    assert (await client.post("/v1/prompts/", json={"name": "draft-only"}, headers=admin)).status_code == 201
    reader = await make_key(Scope.READ, name="app")

    models = sdk(client, reader).models.list()

    assert [model.id for model in models.data] == ["prompt:greet", "config:cfg", "config:other"]
    assert {model.object for model in models.data} == {"model"}
    assert all(model.created > 0 for model in models.data)
    with pytest.raises(openai.PermissionDeniedError):
        sdk(client, await make_key(Scope.ANALYZE, name="analyst")).models.list()


# -- experiments


class OneExperiment:
    """Routes every unit but "outsider" into variant "b" of experiment "tone" (version 1)."""

    def route(self, prompt: str, unit: str) -> Routing | None:
        if unit == "outsider":
            return Routing(ExperimentOut(key="tone", phase=2, variant=None, in_experiment=False), version=None)
        return Routing(ExperimentOut(key="tone", phase=2, variant="b", in_experiment=True), version=1)


async def test_experiments_route_by_unit_or_else_by_the_openai_user(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine, sdk: SyncFactory
) -> None:
    client = await registry({"fault": backend(fault.url)}, router=OneExperiment())  # type: ignore[attr-defined]
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096)
    openai_client = sdk(client, admin)

    by_user = openai_client.chat.completions.with_raw_response.create(
        model="prompt:greet", messages=[], user="u-1", extra_body=VARIABLES
    )
    by_unit = openai_client.chat.completions.create(
        model="prompt:greet", messages=[], user="someone", extra_body={**VARIABLES, "unit": "outsider"}
    )

    facts = by_user.parse().model_extra["registry"]  # type: ignore[index]
    assert facts["experiment"] == {"key": "tone", "phase": 2, "variant": "b", "in_experiment": True}
    assert by_user.headers["x-registry-experiment"] == "tone"
    assert by_user.headers["x-registry-variant"] == "b"
    assert by_unit.model_extra["registry"]["experiment"]["in_experiment"] is False  # type: ignore[index]
    assert [seen.payload["user"] for seen in fault.seen(model, CHAT)] == ["u-1", "someone"]
    rows = await records(client, admin, admin_engine)
    assert [(row["unit"], row["variant"]) for row in rows] == [("u-1", "b"), ("outsider", None)]


async def test_a_caller_closing_the_stream_aborts_the_backend_and_is_charged_for_what_it_generated(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine, sdk: SyncFactory
) -> None:
    model = unique("stall-after:2")
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096)
    stream = sdk(client, admin).chat.completions.create(
        model="prompt:greet", messages=[], stream=True, extra_body=VARIABLES
    )

    text = ""
    for chunk in stream:  # the two tokens, then the backend stalls
        text += chunk.choices[0].delta.content or ""
        if text == "Hello from":
            break
    stream.close()
    seen = await finished(fault, model)

    assert seen.disconnected
    [record] = await records(client, admin, admin_engine)
    assert (record["status"], record["stream"], record["output_tokens"]) == ("cancelled", True, 2)
