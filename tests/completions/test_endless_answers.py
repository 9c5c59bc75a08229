"""A backend whose answer never ends (or runs to gigabytes) is read only as far as the registry needs it.

The error answer of a completion request, a ``/tokenize`` count and an embedding were each read whole
(``response.read()``) before: a backend sending an endless body held the request until its timeout, and the
process's memory grew with every byte. Each is now read to a bound: an error's head is enough for its message,
a count or an embedding much longer than it can be is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from registry.completions.embeddings import ANSWER_BYTES, EmbeddingClient, EmbeddingUnavailableError
from registry.completions.errors import UpstreamUnavailableError
from registry.completions.metrics import CompletionMetrics
from registry.completions.upstream import UpstreamClient
from registry.lib.http_client import ERROR_HEAD_BYTES, HttpClient
from tests.completions.conftest import RegistryFactory, backend, publish
from tests.conftest import serve_over_http

PIECE = b"x" * 65536
# Far longer than any bound the registry reads to (the timeouts below let a reader that reads it whole finish).
ENOUGH = 64 * 1024 * 1024


class EndlessBackend:
    """Answers every request with ``status`` and a body of ``ENOUGH`` bytes, sent until the client leaves."""

    def __init__(self) -> None:
        self.status = {"/v1/chat/completions": 500, "/tokenize": 200, "/v1/embeddings": 200}
        self.sent: dict[str, int] = {}
        self.left: dict[str, bool] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": self.status[path], "headers": []})
        self.sent[path] = 0
        self.left[path] = False
        try:
            while self.sent[path] < ENOUGH:
                await send({"type": "http.response.body", "body": PIECE, "more_body": True})
                self.sent[path] += len(PIECE)
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self.left[path] = True


@pytest.fixture
async def endless() -> AsyncIterator[tuple[EndlessBackend, str]]:
    server = EndlessBackend()
    async with serve_over_http(server) as url:
        yield server, url


async def test_an_endless_error_answer_is_a_backend_failure_named_by_its_status(
    registry: RegistryFactory, admin: dict[str, str], endless: tuple[EndlessBackend, str]
) -> None:
    server, url = endless
    settings = backend(url, first_token_timeout=120.0, total_timeout=240.0, max_retries=0)
    client = await registry({"endless": settings})
    await publish(client, admin, backend="endless", model="any")
    response = await client.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=admin)
    assert response.status_code == 502, response.text
    assert "answered 500" in response.json()["detail"]
    assert server.sent["/v1/chat/completions"] < ENOUGH  # the registry stopped reading, and closed the connection


async def test_a_token_count_longer_than_its_prompt_allows_is_refused(endless: tuple[EndlessBackend, str]) -> None:
    _, url = endless
    http = HttpClient(max_connections=4, keepalive_seconds=5)
    upstream = UpstreamClient(
        http, {"endless": backend(url, first_token_timeout=120.0)}, CompletionMetrics(CollectorRegistry())
    )
    payload = {"model": "any", "messages": [{"role": "user", "content": "Say hello to Ada."}]}
    try:
        with pytest.raises(UpstreamUnavailableError, match="sent a token count of over") as refused:
            await upstream.count_prompt_tokens(upstream.backend("endless"), payload)
    finally:
        await http.close()
    limit = int(refused.value.detail.rsplit("over ", 1)[1].split()[0])
    assert ERROR_HEAD_BYTES < limit < 2 * ERROR_HEAD_BYTES  # a bound from the request's size, not a constant


async def test_an_embedding_answer_past_its_bound_is_refused(endless: tuple[EndlessBackend, str]) -> None:
    _, url = endless
    http = HttpClient(max_connections=4, keepalive_seconds=5)
    upstream = UpstreamClient(
        http, {"embed": backend(url, first_token_timeout=120.0)}, CompletionMetrics(CollectorRegistry())
    )
    embeddings = EmbeddingClient(http, upstream.backend("embed"), "any")
    try:
        with pytest.raises(EmbeddingUnavailableError, match=f"over {ANSWER_BYTES} bytes"):
            await embeddings.embed("hello")
    finally:
        await http.close()
