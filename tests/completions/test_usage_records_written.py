"""Usage records are stored exactly as recorded, on PostgreSQL (one JSON document per batch) and SQLite alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from registry.completions.models import CompletionRecord
from registry.completions.repository import CompletionRepository

FULL: dict[str, Any] = {
    "created_at": datetime(2026, 3, 14, 23, 59, 59, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    "request_id": "req-1",
    "prompt": "support/answer",
    "prompt_version": 3,
    "config": "fast",
    "config_version": 2,
    "backend": "vllm",
    "model": "qwen",
    "experiment_key": "tone",
    "experiment_phase": 1,
    "variant": "b",
    "unit": "user-7",
    "api_key_id": "abcdefghijkm",
    "stream": True,
    "status": "blocked",
    "error_type": "content_blocked",
    "finish_reason": "stop",
    "input_tokens": 2_000_000_000,
    "output_tokens": 0,
    "cost": 0.1 + 0.2,
    "latency_ms": 1e-12,
    "ttft_ms": 12345.678901234,
    "fallback_used": True,
    "cached": False,
    "cache_similarity": 0.9375,
    "prompt_text": 'user: "quoted" \\ back\nslash, tab\t, emoji \U0001f600, accents é',
    "completion_text": "",
    "guard_outcomes": [{"guard": "pii", "stage": "input", "outcome": "redacted", "findings": [1, 2.5, None]}],
    "guard_blocked": "deny",
    "guard_flagged": True,
}
SPARSE: dict[str, Any] = {"prompt": "p", "status": "ok"}  # the rest from the columns' defaults


async def stored(engine: AsyncEngine) -> list[CompletionRecord]:
    async with async_sessionmaker(engine)() as session:
        return list((await session.scalars(select(CompletionRecord).order_by(CompletionRecord.id))).all())


async def test_every_column_is_stored_as_recorded(migrated_engine: AsyncEngine) -> None:
    async with async_sessionmaker(migrated_engine)() as session, session.begin():
        await CompletionRepository(session).add_records([FULL, SPARSE, {**FULL, "request_id": "req-2"}])
    by_request = {record.request_id: record for record in await stored(migrated_engine)}
    full, second, sparse = by_request["req-1"], by_request["req-2"], by_request[None]
    for record in (full, second):
        for name, value in FULL.items():
            if name == "created_at":
                assert record.created_at.astimezone(UTC) == value.astimezone(UTC)
            elif name != "request_id":
                assert getattr(record, name) == value, name
    assert (full.request_id, second.request_id) == ("req-1", "req-2")
    assert (sparse.prompt, sparse.status, sparse.prompt_version, sparse.guard_outcomes) == ("p", "ok", None, None)
    assert (sparse.stream, sparse.cost, sparse.input_tokens, sparse.guard_flagged) == (False, 0.0, 0, False)
    assert sparse.created_at is not None


async def test_a_value_too_long_for_its_column_fails_the_batch_on_postgresql(clean_database: AsyncEngine) -> None:
    """PostgreSQL only: SQLite does not bound VARCHAR."""
    with pytest.raises(DBAPIError):
        async with async_sessionmaker(clean_database)() as session, session.begin():
            await CompletionRepository(session).add_records([SPARSE, {**SPARSE, "status": "x" * 17}])
    assert await stored(clean_database) == []
