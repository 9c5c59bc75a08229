"""A prompt's semantic cache at threshold 1 (the most a setting may be: reuse only what is the same request, once
normalised) serves an identical request the answer it stored.

An embedding scaled to unit length and stored as float32 is not exactly of length 1: the similarity of a request
with itself can come out as 0.99999996, which the cache reports as 1.0 but compared, unrounded, against the
threshold. So at threshold 1 an identical request missed for some embeddings, and the model answered it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from registry.completions.similarity import best_match, pack
from tests.completions.conftest import RegistryFactory, backend, publish, registry, serve_in_thread, unique  # noqa: F401
from tests.completions.fault_server import CHAT, FaultServer

# What the stand-in embedding model answers for every text: a vector whose similarity with itself, as the cache
# computes it, is just under 1.
VECTOR = [1.0, 1.0, 1.0]


class SameVector:
    """``/v1/embeddings`` answering ``VECTOR`` for every input; everything else the fault server answers."""

    def __init__(self, fault: FaultServer) -> None:
        self.fault = fault
        self.embedded = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] != "/v1/embeddings":
            await self.fault(scope, receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        self.embedded += 1
        body = json.dumps({"data": [{"embedding": VECTOR}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def same_vector(fault: FaultServer) -> Iterator[tuple[str, SameVector]]:
    server = SameVector(fault)
    with serve_in_thread(server, lifespan="off") as url:
        yield url, server


async def test_at_threshold_one_an_identical_request_is_served_from_the_semantic_cache(
    registry: RegistryFactory,  # noqa: F811
    admin: dict[str, str],
    fault: FaultServer,
    same_vector: tuple[str, SameVector],
) -> None:
    found = best_match(pack(VECTOR), [(1, pack(VECTOR))], 0.0)
    assert found is not None
    assert found[1] < 1.0  # what the case needs: under 1 unrounded

    url, embeddings = same_vector
    client = await registry({"local": backend(url)}, semantic_cache_backend="local", semantic_cache_model="same-vector")
    model = unique("ok")
    await publish(
        client, admin, backend="local", model=model, params={"max_tokens": 8, "temperature": 0}, store_io=True
    )
    enabled = await client.put(
        "/v1/prompts/greet/semantic-cache", json={"enabled": True, "threshold": 1.0}, headers=admin
    )
    assert enabled.status_code == 200, enabled.text
    body = {"variables": {"name": "Ada"}}

    first = await client.post("/v1/prompts/greet/complete", json=body, headers=admin)
    again = await client.post("/v1/prompts/greet/complete", json=body, headers=admin)

    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json()["cached"] is False
    assert embeddings.embedded == 2
    # Before: a miss (cached false), the model asked a second time.
    assert again.json()["cached"] == "semantic"
    assert again.json()["similarity"] == 1.0
    assert again.json()["text"] == first.json()["text"]
    assert len(fault.seen(model, CHAT)) == 1
