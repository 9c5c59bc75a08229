"""Usage records, buffered in memory and written in batches by a periodic job.

A completion must not wait for a database write, and many small inserts cost
more than one large one. The buffer is bounded; when the database is down it
keeps the newest records and retries on the next flush.

Budgets count a key's spend as the database's total plus what is buffered here.
A flush moves spend from the buffer to the database, so it tells its listeners
(the budget guard's cached totals) what it wrote in the same step that takes it
off the buffer's count: the sum never drops. ``write_epoch`` lets a reader of
the database's total tell whether a write overlapped its read.

An erased unit (``registry.experiments.privacy``) is remembered by its digest for ``ERASED_SECONDS``: a record of
it added meanwhile (a completion in flight during the erasure) is buffered without the unit, its request id and
texts, as are buffered ones and those of a batch taken before the erasure whose write failed; a batch whose write
was under way is anonymised again once it committed, unless the erasure of this process waits for it
(``erase_unit``), so that erasure's own update counts it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.repository import CompletionRepository
from registry.experiments.privacy_digest import ERASURE_IN_FLIGHT_SECONDS, unit_digest
from registry.experiments.repository import IngestRepository

logger = structlog.get_logger("registry.completions.usage")

_NO_COST = 1e-12  # what is left of a cost after adding and taking away the same floats
# How long an erased unit's records are anonymised as they come: longer than any completion runs (as the exact
# cache's tombstones, registry.completions.cache.IN_FLIGHT_SECONDS).
ERASED_SECONDS = ERASURE_IN_FLIGHT_SECONDS
_ANONYMISED = {"unit": None, "request_id": None, "prompt_text": None, "completion_text": None}

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
        self._erased: dict[str, float] = {}  # digest of an erased unit -> until when its records are anonymised
        self._erasing_here: Counter[str] = Counter()  # digests this process's erasures are anonymising in the database
        self._flushing: set[asyncio.Event] = set()  # one per batch being written, set once its write ended

    def on_written(self, listener: WrittenListener) -> None:
        """Call ``listener`` with the spend of each batch, in the step that takes it off the pending spend."""
        self._listeners.append(listener)

    def add(self, record: dict[str, Any]) -> None:
        """Buffer one record; its spend is added to the pending totals in line (once per completion, so cheap)."""
        if self._erased and record.get("unit") and self._is_erased(record["unit"]):
            record.update(_ANONYMISED)  # its unit was erased while it ran
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

    def forget_unit(self, digest: str) -> tuple[int, int]:
        """The unit of ``digest`` was erased: its buffered completions, and those recorded in the next
        ``ERASED_SECONDS``, are written without it, their request ids and texts.

        Returns how many buffered records were the unit's and how many of them held texts.
        """
        self._prune_erased()
        self._erased[digest] = time.monotonic() + ERASED_SECONDS
        forgotten = with_text = 0
        digests: dict[str, str] = {}
        for record in self._buffer:
            unit = record.get("unit")
            if unit and (digests.get(unit) or digests.setdefault(unit, unit_digest(unit))) == digest:
                forgotten += 1
                with_text += record.get("prompt_text") is not None or record.get("completion_text") is not None
                record.update(_ANONYMISED)
        return forgotten, with_text

    async def erase_unit(self, unit: str) -> tuple[int, int]:
        """This process erases ``unit``: ``forget_unit``, after the batches being written meanwhile have ended.

        Call it before the erasure's session holds a connection (a flush takes one of its own). Once it returns,
        every record of the unit is either anonymised in the buffer (counted here) or committed with the unit,
        for the erasure's update to anonymise and count; none is being written. Returns as ``forget_unit``.
        """
        digest = unit_digest(unit)
        self._erasing_here[digest] += 1
        try:
            forgotten, with_text = self.forget_unit(digest)
            writing = list(self._flushing)
            if writing:
                await asyncio.gather(*(written.wait() for written in writing))
                restored, restored_with_text = self.forget_unit(digest)  # a batch whose write failed is back
                forgotten, with_text = forgotten + restored, with_text + restored_with_text
        finally:
            self._erasing_here[digest] -= 1
            if not self._erasing_here[digest]:
                del self._erasing_here[digest]
        return forgotten, with_text

    def _prune_erased(self) -> None:
        now = time.monotonic()
        for expired in [digest for digest, until in self._erased.items() if until <= now]:
            del self._erased[expired]

    def _is_erased(self, unit: str) -> bool:
        until = self._erased.get(unit_digest(unit))
        return until is not None and until > time.monotonic()

    def _erased_units(self, records: list[dict[str, Any]], *, skip_erasing_here: bool = False) -> set[str]:
        """The units of ``records`` erased since they were recorded."""
        units = {r["unit"] for r in records if r.get("unit") and self._is_erased(r["unit"])}
        if skip_erasing_here and self._erasing_here:
            units = {unit for unit in units if unit_digest(unit) not in self._erasing_here}
        return units

    def _anonymise(self, records: list[dict[str, Any]], units: set[str]) -> None:
        for record in records:
            if record.get("unit") in units:
                record.update(_ANONYMISED)

    def pending_spend(self, key: str) -> tuple[int, float]:
        """Tokens and cost of ``key`` that are buffered but not yet written (for budgets)."""
        return self._pending.get(key, (0, 0.0))

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        if self._erased:  # records a failed write put back while an erasure here waited for it
            self._prune_erased()
            self._anonymise(batch, self._erased_units(batch))
        self.write_epoch += 1
        ended = asyncio.Event()
        self._flushing.add(ended)
        erased_meanwhile: set[str] = set()
        try:
            async with self._sessionmaker() as session, session.begin():
                await CompletionRepository(session).add_records(batch)
                # Completions are observations of experiment metrics: the aggregator recomputes their units.
                await IngestRepository(session).mark_units_changed({r["unit"] for r in batch if r.get("unit")})
        except Exception as exc:
            self._anonymise(batch, self._erased_units(batch, skip_erasing_here=True))
            self._buffer[:0] = batch
            logger.warning("could not write usage records; will retry", error=str(exc), pending=len(self._buffer))
            return
        else:
            if self._erased:
                erased_meanwhile = self._erased_units(batch, skip_erasing_here=True)
        finally:
            self.write_epoch += 1
            self._flushing.discard(ended)
            ended.set()
        written = spend_of(batch)
        self._move_pending(written, sign=-1)
        for listener in self._listeners:
            listener(written)
        if erased_meanwhile:
            await self._anonymise_written(erased_meanwhile)

    async def _anonymise_written(self, units: set[str]) -> None:
        """Units erased (on another replica) while their records were being written: anonymise them again."""
        try:
            async with self._sessionmaker() as session, session.begin():
                repository = CompletionRepository(session)
                for unit in units:
                    await repository.anonymise_unit(unit)
        except Exception as exc:
            logger.error("could not anonymise the completions of units erased during a write", error=str(exc))
