"""Usage records, buffered in memory and written in batches by a periodic job.

A completion must not wait for a database write, and many small inserts cost
more than one large one. The buffer is bounded; when the database is down it
keeps the newest records and retries on the next flush.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.repository import CompletionRepository

logger = structlog.get_logger("registry.completions.usage")


class UsageRecorder:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, max_buffered: int = 100_000) -> None:
        self._sessionmaker = sessionmaker
        self._max_buffered = max_buffered
        self._buffer: list[dict[str, Any]] = []
        self._pending: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.dropped = 0

    def add(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        self._count(record)
        if len(self._buffer) > self._max_buffered:
            overflow = len(self._buffer) - self._max_buffered
            del self._buffer[:overflow]
            self.dropped += overflow
            logger.warning("usage buffer full; oldest records dropped", dropped=overflow)

    def _count(self, record: dict[str, Any]) -> None:
        if record.get("api_key_id") and not record.get("cached"):
            entry = self._pending[record["api_key_id"]]
            entry[0] += record.get("input_tokens", 0) + record.get("output_tokens", 0)
            entry[1] += record.get("cost", 0.0)

    def pending_spend(self, key: str) -> tuple[int, float]:
        """Tokens and cost of ``key`` that are buffered but not yet written (for budgets)."""
        tokens, cost = self._pending.get(key, (0, 0.0))
        return int(tokens), cost

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            async with self._sessionmaker() as session, session.begin():
                await CompletionRepository(session).add_records(batch)
        except Exception as exc:
            self._buffer[:0] = batch
            logger.warning("could not write usage records; will retry", error=str(exc), pending=len(self._buffer))
            return
        self._pending.clear()
        for record in self._buffer:  # added while the batch was written
            self._count(record)
