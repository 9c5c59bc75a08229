"""Completions through the client: whole, and streamed as typed events (a stand-in OpenAI-compatible backend)."""

from __future__ import annotations

import uuid

import pytest
from prompt_registry_client import (
    AsyncRegistryClient,
    CachePolicy,
    CompletionDone,
    CompletionMetadata,
    PromptNotFound,
    RegistryClient,
    ServiceUnavailable,
    TextDelta,
)

from tests.clients.conftest import Live, LiveFactory
from tests.completions.conftest import backend
from tests.completions.fault_server import FaultServer

NO_FEED = CachePolicy(watch_changes=False)


@pytest.fixture
def serving(live_registry: LiveFactory, fault: FaultServer) -> Live:
    live = live_registry(backends={"fault": backend(fault.url)})  # type: ignore[attr-defined]
    return live


def publish(live: Live, prompt: str, behaviour: str) -> None:
    """A chat prompt whose config runs on the stand-in backend with ``behaviour`` (see fault_server.py)."""
    config = f"cfg-{prompt}"
    live.ok(live.admin.post("/v1/configs", json={"name": config}))
    model = f"{behaviour}/{uuid.uuid4().hex[:8]}"
    body = {"backend": "fault", "model": model, "params": {"max_tokens": 8}}
    live.ok(live.admin.post(f"/v1/configs/{config}/versions", json=body))
    chat = {"kind": "chat", "messages": [{"role": "user", "content": "Say hello to {{ name }}."}]}
    live.prompt(prompt, {**chat, "config": {"name": config, "version": 1}})


def test_a_streamed_completion_arrives_as_metadata_deltas_and_usage(serving: Live) -> None:
    publish(serving, "greet", "ok")
    with RegistryClient(serving.url, serving.key, cache=NO_FEED) as registry:
        whole = registry.complete("greet", {"name": "Ada"})
        with registry.complete("greet", {"name": "Ada"}, stream=True) as stream:
            events = list(stream)
    assert isinstance(events[0], CompletionMetadata)
    assert (events[0].prompt, events[0].version, events[0].config.backend) == ("greet", 1, "fault")
    assert all(isinstance(e, TextDelta) for e in events[1:-1])
    assert isinstance(events[-1], CompletionDone)
    assert stream.text == "".join(e.text for e in events if isinstance(e, TextDelta)) == whole.text
    assert stream.done is not None
    assert stream.done.usage == whole.usage
    assert whole.usage.output_tokens == 3
    assert whole.text


async def test_the_async_client_streams_a_completion(serving: Live) -> None:
    publish(serving, "greet", "ok")
    async with AsyncRegistryClient(serving.url, serving.key, cache=NO_FEED) as registry:
        stream = await registry.complete("greet", {"name": "Ada"}, stream=True, max_tokens=2)
        async with stream:
            events = [event async for event in stream]
    assert isinstance(events[0], CompletionMetadata)
    assert isinstance(events[-1], CompletionDone)
    assert events[-1].usage.output_tokens == 2
    assert stream.text


def test_a_stream_that_fails_midway_raises_a_typed_error_after_the_text_so_far(serving: Live) -> None:
    publish(serving, "greet", "malformed-after:2")
    received = []
    with RegistryClient(serving.url, serving.key, cache=NO_FEED) as registry:
        stream = registry.complete("greet", {"name": "Ada"}, stream=True)
        with pytest.raises(ServiceUnavailable) as caught:
            received.extend(stream)
    assert caught.value.type == "upstream_unavailable"
    assert isinstance(received[0], CompletionMetadata)
    assert {type(e) for e in received[1:]} == {TextDelta}  # tokens read together arrive as one delta
    assert stream.text == "Hello from"


def test_a_completion_of_an_unknown_prompt_is_prompt_not_found(serving: Live) -> None:
    with RegistryClient(serving.url, serving.key, cache=NO_FEED) as registry, pytest.raises(PromptNotFound):
        registry.complete("nope", {"name": "Ada"}, stream=True)
