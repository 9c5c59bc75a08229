"""Which cache answered a completion: ``cached`` is False, True (the exact cache) or "semantic" (with the
``similarity``), whole or streamed, in the sync and async clients."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prompt_registry_client import (
    AsyncRegistryClient,
    CachePolicy,
    CompletionMetadata,
    RegistryClient,
    RetryPolicy,
)

OPTIONS: dict[str, Any] = {
    "retries": RetryPolicy(attempts=1),
    "cache": CachePolicy(watch_changes=False),
}
META = {
    "prompt": "greet",
    "version": 1,
    "config": {"name": "c", "version": 1, "backend": "local", "model": "m"},
    "experiment": None,
    "fallback_used": False,
}
DONE = {
    "finish_reason": "stop",
    "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
    "cost": 0.0,
    "latency_ms": 5.0,
    "ttft_ms": 1.0,
}
HITS = [
    pytest.param({"cached": False}, False, None, id="the-model"),
    pytest.param({"cached": True}, True, None, id="the-exact-cache"),
    pytest.param({"cached": "semantic", "similarity": 0.951}, "semantic", 0.951, id="the-semantic-cache"),
    pytest.param({"cached": "another"}, True, None, id="a-cache-named-later-reads-as-true"),
]


def whole(cache: dict[str, Any]) -> httpx.MockTransport:
    body = {**META, **cache, **DONE, "text": "Hi"}
    return httpx.MockTransport(lambda request: httpx.Response(200, json=body))


def streamed(cache: dict[str, Any]) -> httpx.MockTransport:
    events = [("metadata", {**META, **cache}), ("delta", {"text": "Hi"}), ("done", DONE)]
    content = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()
    headers = {"content-type": "text/event-stream"}
    return httpx.MockTransport(lambda request: httpx.Response(200, content=content, headers=headers))


@pytest.mark.parametrize(("cache", "cached", "similarity"), HITS)
def test_a_completion_says_which_cache_answered(cache: dict[str, Any], cached: Any, similarity: float | None) -> None:
    with RegistryClient("http://registry.test", "prk_test", transport=whole(cache), **OPTIONS) as registry:
        completion = registry.complete("greet", {"name": "Ada"})

    assert completion.cached == cached
    assert type(completion.cached) is type(cached)
    assert completion.similarity == similarity


@pytest.mark.parametrize(("cache", "cached", "similarity"), HITS)
def test_a_streams_metadata_says_which_cache_answered(
    cache: dict[str, Any], cached: Any, similarity: float | None
) -> None:
    with (
        RegistryClient("http://registry.test", "prk_test", transport=streamed(cache), **OPTIONS) as registry,
        registry.complete("greet", {"name": "Ada"}, stream=True) as stream,
    ):
        events = list(stream)

    metadata = events[0]
    assert isinstance(metadata, CompletionMetadata)
    assert metadata.cached == cached
    assert metadata.similarity == similarity


async def test_the_async_client_reads_a_semantic_hit() -> None:
    cache = {"cached": "semantic", "similarity": 0.97}
    async with AsyncRegistryClient("http://registry.test", "prk_test", transport=whole(cache), **OPTIONS) as registry:
        completion = await registry.complete("greet", {"name": "Ada"})

    assert (completion.cached, completion.similarity) == ("semantic", 0.97)
