"""The OpenAI-compatible door against a real vLLM (CPU, tiny random-weight model), through the official SDK.

Beside ``test_vllm.py`` so both share the session's one vLLM server. The words are random: these tests
check the protocol (shapes, streaming order, usage, versions), not the text.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.completions.conftest import RegistryFactory, backend, publish

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture
async def vllm(registry: RegistryFactory, vllm_url: str) -> httpx.AsyncClient:
    return await registry({"local": backend(vllm_url, first_token_timeout=30, total_timeout=60)})


@pytest.fixture
def openai_client(vllm: httpx.AsyncClient, admin: dict[str, str]) -> Iterator[OpenAI]:
    key = admin["Authorization"].removeprefix("Bearer ")
    with OpenAI(base_url=str(vllm.base_url).rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=60) as client:
        yield client


async def test_chat_completion_of_a_prompt_streamed_and_not(
    vllm: httpx.AsyncClient, admin: dict[str, str], openai_client: OpenAI
) -> None:
    await publish(vllm, admin, backend="local", model="tiny", params={"max_tokens": 8}, prices=(1.0, 2.0))
    request = {"model": "prompt:greet", "messages": [{"role": "user", "content": "Go on."}]}

    completion = openai_client.chat.completions.create(**request, extra_body={"variables": {"name": "Ada"}})
    chunks = list(
        openai_client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}, extra_body={"variables": {"name": "Ada"}}
        )
    )

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 8
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert isinstance(completion.choices[0].message.content, str)
    facts = completion.model_extra["registry"]  # type: ignore[index]
    assert (facts["prompt"], facts["version"]) == ("greet", 1)
    assert facts["config"] == {"name": "cfg", "version": 1, "backend": "local", "model": "tiny"}
    assert facts["cost"] == pytest.approx((usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert 1 <= len(deltas) <= 8  # tokens that arrive in one read go out as one chunk, so how many is timing
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["length"],
        ["stop"],
    )
    streamed_usage = chunks[-1].usage
    assert streamed_usage is not None
    assert streamed_usage.prompt_tokens == usage.prompt_tokens  # the same rendered prompt
    assert 0 < streamed_usage.completion_tokens <= 8


async def test_text_prompt_and_a_config_alone_on_the_completions_endpoint(
    vllm: httpx.AsyncClient, admin: dict[str, str], openai_client: OpenAI
) -> None:
    await publish(vllm, admin, backend="local", model="tiny", kind="text", template="Once upon a {{ name }}")

    rendered = openai_client.completions.create(
        model="prompt:greet", prompt=" there", extra_body={"variables": {"name": "time"}}
    )
    direct = openai_client.completions.create(model="config:cfg", prompt="Once upon a time there")

    assert rendered.usage is not None
    assert direct.usage is not None
    assert rendered.usage.prompt_tokens == direct.usage.prompt_tokens  # the same text reached the model
    assert rendered.usage.completion_tokens > 0
    assert direct.model_extra["registry"]["prompt"] is None  # type: ignore[index]
