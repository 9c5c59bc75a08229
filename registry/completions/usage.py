"""Usage records, buffered in memory and written in batches by a periodic job.

A completion must not wait for a database write, and many small inserts cost
more than one large one. The buffer is bounded; when the database is down it
keeps the newest records and retries on the next flush.

Budgets count a key's spend as the database's total plus what is buffered here.
A flush moves spend from the buffer to the database, so it tells its listeners
(the budget guard's cached totals) what it wrote in the same step that takes it
off the buffer's count: the sum never drops. ``write_epoch`` lets a reader of
the database's total tell whether a write overlapped its read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.repository import CompletionRepository
from registry.experiments.repository import IngestRepository

logger = structlog.get_logger("registry.completions.usage")

_NO_COST = 1e-12  # what is left of a cost after adding and taking away the same floats

Spend = dict[str, tuple[int, float]]  # per API key: tokens and cost
WrittenListener = Callable[[Spend], None]


def spend_of(records: Iterable[dict[str, Any]]) -> Spend:
    """Tokens and cost per API key of ``records``; cache hits cost nothing."""
    totals: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for record in records:
        if record.get("api_key_id") and not record.get("cached"):
            entry = totals[record["api_key_id"]]
            entry[0] += record.get("input_tokens", 0) + record.get("output_tokens", 0)
            entry[1] += record.get("cost", 0.0)
    return {key: (int(tokens), cost) for key, (tokens, cost) in totals.items()}


class UsageRecorder:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, max_buffered: int = 100_000) -> None:
        self._sessionmaker = sessionmaker
        self._max_buffered = max_buffered
        self._buffer: list[dict[str, Any]] = []
        self._pending: dict[str, tuple[int, float]] = {}
        self._listeners: list[WrittenListener] = []
        # Odd while a batch is being written; a read that starts and ends on the same even value
        # saw no write begin or commit.
        self.write_epoch = 0
        self.dropped = 0

    def on_written(self, listener: WrittenListener) -> None:
        """Call ``listener`` with the spend of each batch, in the step that takes it off the pending spend."""
        self._listeners.append(listener)

    def add(self, record: dict[str, Any]) -> None:
        """Buffer one record; its spend is added to the pending totals in line (once per completion, so cheap)."""
        self._buffer.append(record)
        key = record.get("api_key_id")
        if key and not record.get("cached"):  # what spend_of counts, without its dictionaries for one record
            tokens = record.get("input_tokens", 0) + record.get("output_tokens", 0)
            cost = record.get("cost", 0.0)
            if tokens or cost:
                pending_tokens, pending_cost = self._pending.get(key, (0, 0.0))
                pending_tokens += int(tokens)
                pending_cost += cost
                if pending_tokens or abs(pending_cost) > _NO_COST:
                    self._pending[key] = (pending_tokens, pending_cost)
                else:
                    self._pending.pop(key, None)
        if len(self._buffer) > self._max_buffered:
            overflow = len(self._buffer) - self._max_buffered
            self._move_pending(spend_of(self._buffer[:overflow]), sign=-1)
            del self._buffer[:overflow]
            self.dropped += overflow
            logger.warning("usage buffer full; oldest records dropped", dropped=overflow)

    def _move_pending(self, spend: Spend, *, sign: int) -> None:
        for key, (tokens, cost) in spend.items():
            pending_tokens, pending_cost = self._pending.get(key, (0, 0.0))
            pending_tokens += sign * tokens
            pending_cost += sign * cost
            if pending_tokens or abs(pending_cost) > _NO_COST:
                self._pending[key] = (pending_tokens, pending_cost)
            else:
                self._pending.pop(key, None)

    def forget_unit(self, unit: str) -> None:
        """The unit was erased: its buffered completions are written without it, their request ids and texts."""
        for record in self._buffer:
            if record.get("unit") == unit:
                record.update(unit=None, request_id=None, prompt_text=None, completion_text=None)

    def pending_spend(self, key: str) -> tuple[int, float]:
        """Tokens and cost of ``key`` that are buffered but not yet written (for budgets)."""
        return self._pending.get(key, (0, 0.0))

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        self.write_epoch += 1
        try:
            async with self._sessionmaker() as session, session.begin():
                await CompletionRepository(session).add_records(batch)
                # Completions are observations of experiment metrics: the aggregator recomputes their units.
                await IngestRepository(session).mark_units_changed({r["unit"] for r in batch if r.get("unit")})
        except Exception as exc:
            self._buffer[:0] = batch
            logger.warning("could not write usage records; will retry", error=str(exc), pending=len(self._buffer))
            return
        finally:
            self.write_epoch += 1
        written = spend_of(batch)
        self._move_pending(written, sign=-1)
        for listener in self._listeners:
            listener(written)
