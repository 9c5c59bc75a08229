"""Helpers shared by the semantic cache's tests: a registry whose embeddings come from the real model, and a
semantic cache of its own over a prompt, without a registry."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.metrics import CompletionMetrics
from registry.completions.models import SemanticCacheSettings
from registry.completions.semantic_cache import SemanticCache, SemanticProbe
from registry.completions.similarity import pack
from registry.db.engine import create_sessionmaker
from registry.lib.changes import ChangeBus
from registry.prompts.models import Prompt
from registry.prompts.schemas import LinkedConfig
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


LINKED_CONFIG = LinkedConfig(
    name="cfg",
    version=1,
    backend="b",
    model="m",
    params={},
    input_price_per_mtok=0.0,
    output_price_per_mtok=0.0,
    max_context_tokens=None,
)


async def semantic_cache_on(
    engine: AsyncEngine, name: str, metrics: CompletionMetrics | None = None
) -> tuple[SemanticCache, Prompt]:
    """Prompt ``name`` (``store_io`` on) with its semantic cache on, and a semantic cache over ``engine`` (no Redis)."""
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        prompt = Prompt(name=name, store_io=True, created_by="test", updated_by="test")
        session.add(prompt)
        await session.flush()
        session.add(
            SemanticCacheSettings(
                prompt_id=prompt.id, enabled=True, threshold=0.8, exact_variables=[], updated_by="test"
            )
        )
    cache = SemanticCache(
        sessionmaker,
        None,
        metrics or CompletionMetrics(CollectorRegistry()),
        ChangeBus(None, "changes"),
        ttl=60,
        max_candidates=10,
        settings_ttl=60,
    )
    return cache, prompt


def miss_for(prompt: str, unit: str, scope: str = "scope") -> SemanticProbe:
    """A lookup of version 1 of ``prompt`` for ``unit`` that found nothing, as the cache stores its answer."""
    return SemanticProbe(scope, pack([1.0, 0.0]), prompt, 1, LINKED_CONFIG, None, unit=unit)
