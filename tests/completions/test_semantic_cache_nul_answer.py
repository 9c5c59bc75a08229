"""An answer holding a NUL (U+0000) is not kept in the semantic cache: PostgreSQL cannot store one, and a hit
replaying it with U+FFFD in its place would not be the model's answer. It used to fail the store on PostgreSQL,
counted as a store error as if the database had failed. Likewise an answer whose finish reason is longer than its
column (a backend's own): cut to fit, a hit would not replay the backend's."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.cache import CachedCompletion
from registry.completions.metrics import CompletionMetrics
from registry.completions.models import SemanticCacheSettings
from registry.completions.semantic_cache import SemanticCache, SemanticProbe
from registry.completions.similarity import pack
from registry.db.engine import create_sessionmaker
from registry.lib.changes import ChangeBus
from registry.prompts.models import Prompt
from registry.prompts.schemas import LinkedConfig

CONFIG = LinkedConfig(
    name="cfg",
    version=1,
    backend="b",
    model="m",
    params={},
    input_price_per_mtok=0.0,
    output_price_per_mtok=0.0,
    max_context_tokens=None,
)


async def stored_texts(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT text FROM semantic_cache_entries ORDER BY id"))
        return [row[0] for row in rows.all()]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (CachedCompletion("Hello\x00world", "stop", 5, 2), "nul"),
        (CachedCompletion("Hello", "st\x00p", 5, 1), "nul"),
        (CachedCompletion("Hello", "x" * 33, 5, 1), "long_finish_reason"),
    ],
    ids=["a nul in its text", "a nul in its finish reason", "a finish reason past its column"],
)
async def test_an_answer_postgresql_cannot_store_as_it_is_is_skipped_not_counted_as_a_store_error(
    migrated_engine: AsyncEngine, answer: CachedCompletion, reason: str
) -> None:
    sessionmaker = create_sessionmaker(migrated_engine)
    async with sessionmaker() as session, session.begin():
        prompt = Prompt(name="nul-greet", created_by="t", updated_by="t", store_io=True)
        session.add(prompt)
        await session.flush()
        session.add(
            SemanticCacheSettings(prompt_id=prompt.id, enabled=True, threshold=0.9, exact_variables=[], updated_by="t")
        )
    metrics_registry = CollectorRegistry()
    cache = SemanticCache(
        sessionmaker,
        None,
        CompletionMetrics(metrics_registry),
        ChangeBus(None, "changes"),
        ttl=timedelta(hours=1).total_seconds(),
        max_candidates=10,
        settings_ttl=60.0,
    )

    def probe(scope: str) -> SemanticProbe:
        return SemanticProbe(scope, pack([1.0, 0.0]), "nul-greet", 1, CONFIG, None, unit="u1")

    await cache.store(probe("with-nul"), answer)
    await cache.store(probe("plain"), CachedCompletion("Hello there", "stop", 5, 2))

    assert await stored_texts(migrated_engine) == ["Hello there"]
    assert metrics_registry.get_sample_value("registry_semantic_cache_store_skips_total", {"reason": reason}) == 1
    assert metrics_registry.get_sample_value("registry_semantic_cache_store_errors_total") == 0
