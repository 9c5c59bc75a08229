"""An answer holding a NUL (U+0000) is not kept in the semantic cache: PostgreSQL cannot store one, and a hit
replaying it with U+FFFD in its place would not be the model's answer. It used to fail the store on PostgreSQL,
counted as a store error as if the database had failed. Likewise an answer whose finish reason is longer than its
column (a backend's own): cut to fit, a hit would not replay the backend's."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.cache import CachedCompletion
from registry.completions.metrics import CompletionMetrics
from tests.completions.semantic import miss_for, semantic_cache_on


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
    metrics_registry = CollectorRegistry()
    cache, _ = await semantic_cache_on(migrated_engine, "nul-greet", CompletionMetrics(metrics_registry))

    await cache.store(miss_for("nul-greet", "u1", scope="with-nul"), answer)
    await cache.store(miss_for("nul-greet", "u1", scope="plain"), CachedCompletion("Hello there", "stop", 5, 2))

    assert await stored_texts(migrated_engine) == ["Hello there"]
    assert metrics_registry.get_sample_value("registry_semantic_cache_store_skips_total", {"reason": reason}) == 1
    assert metrics_registry.get_sample_value("registry_semantic_cache_store_errors_total") == 0
