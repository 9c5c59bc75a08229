"""The semantic cache's embedding backend: one text in, one vector out, through ``/v1/embeddings``.

An OpenAI-compatible server (vLLM with a pooling model: ``--runner pooling``) named in
``REGISTRY_BACKENDS`` and chosen by ``REGISTRY_SEMANTIC_CACHE_BACKEND``. It shares the process's HTTP
client and that backend's timeouts and circuit breaker, and never retries: a failed embedding only
means the completion goes to the model as if the cache were off, so its failures are raised as one
error (``EmbeddingUnavailableError``) for the cache to count and swallow, never as a request's problem.
"""

from __future__ import annotations

import aiohttp
import msgspec

from registry.completions.errors import CircuitOpenError
from registry.completions.upstream import Backend
from registry.lib.http_client import ERROR_HEAD_BYTES, HttpClient, read_at_most

_json = msgspec.json.Encoder()
ANSWER_BYTES = 8 * 1024 * 1024  # one vector: 16,384 dimensions of 25 characters each take 400 KB


class EmbeddingUnavailableError(Exception):
    """The embedding backend did not give a usable vector; the request goes on without the cache."""


class _Embedding(msgspec.Struct):
    embedding: list[float]


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


class EmbeddingClient:
    def __init__(self, http: HttpClient, backend: Backend, model: str) -> None:
        self.http = http
        self.backend = backend
        self.model = model

    async def embed(self, text: str) -> list[float]:
        settings = self.backend.settings
        try:
            self.backend.breaker.admit(self.backend.name)
        except CircuitOpenError as exc:
            raise EmbeddingUnavailableError(exc.detail) from exc
        timeout = aiohttp.ClientTimeout(total=settings.first_token_timeout, sock_connect=settings.connect_timeout)
        body = _json.encode({"model": self.model, "input": [text]})
        try:
            async with self.http.session.post(
                settings.url + "/v1/embeddings", data=body, headers=self.backend.headers(), timeout=timeout
            ) as response:
                status = response.status
                content, more = await read_at_most(response, ERROR_HEAD_BYTES if status >= 300 else ANSWER_BYTES)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.backend.breaker.record(failed=True)
            raise EmbeddingUnavailableError(f"embedding backend '{self.backend.name}': {type(exc).__name__}") from exc
        except BaseException:
            self.backend.breaker.release()
            raise
        self.backend.breaker.record(failed=status >= 500)
        if status < 300 and more:
            raise EmbeddingUnavailableError(
                f"embedding backend '{self.backend.name}' sent an answer of over {ANSWER_BYTES} bytes"
            )
        if status >= 300:
            raise EmbeddingUnavailableError(
                f"embedding backend '{self.backend.name}' answered {status}: {content[:200].decode(errors='replace')}"
            )
        try:
            vectors = msgspec.json.decode(content, type=_Embeddings).data
        except msgspec.DecodeError as exc:
            raise EmbeddingUnavailableError(f"embedding backend '{self.backend.name}' sent no embeddings") from exc
        if len(vectors) != 1 or not vectors[0].embedding:
            raise EmbeddingUnavailableError(f"embedding backend '{self.backend.name}' sent {len(vectors)} embeddings")
        return vectors[0].embedding
