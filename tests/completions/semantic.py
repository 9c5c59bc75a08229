"""Helpers shared by the semantic cache's tests: a registry whose embeddings come from the real model."""

from __future__ import annotations

from typing import Any

import httpx

from registry.settings import BackendSettings
from tests.completions.conftest import EMBEDDING_MODEL, RegistryFactory, backend
from tests.completions.fault_server import FaultServer


def embedding_backends(fault: FaultServer, embeddings_url: str) -> dict[str, BackendSettings]:
    """The stand-in backend as ``fault`` and the CPU vLLM with all-MiniLM-L6-v2 as ``embed``."""
    return {"fault": backend(fault.url), "embed": backend(embeddings_url, first_token_timeout=30.0)}  # type: ignore[attr-defined]


SEMANTIC_SETTINGS: dict[str, Any] = {"semantic_cache_backend": "embed", "semantic_cache_model": EMBEDDING_MODEL}


async def semantic_registry(
    registry: RegistryFactory, fault: FaultServer, embeddings_url: str, **overrides: Any
) -> httpx.AsyncClient:
    """A registry on the stand-in backend whose semantic cache embeds with the real model."""
    return await registry(embedding_backends(fault, embeddings_url), **SEMANTIC_SETTINGS, **overrides)


async def ask_as(http: httpx.AsyncClient, headers: dict[str, str], question: str, unit: str) -> dict[str, Any]:
    """Prompt ``greet`` (``{{ question }}``) completed for ``unit``; the answer, which must be a 200."""
    body = {"variables": {"question": question}, "unit": unit}
    response = await http.post("/v1/prompts/greet/complete", json=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer
