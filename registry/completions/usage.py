"""Usage records, buffered in memory and written in batches by a periodic job.

A completion must not wait for a database write, and many small inserts cost
more than one large one. The buffer is bounded; when the database is down it
keeps the newest records and retries on the next flush.

Budgets count a key's spend as the database's total plus what is buffered here.
A flush moves spend from the buffer to the database, so it tells its listeners
(the budget guard's cached totals) what it wrote in the same step that takes it
off the buffer's count: the sum never drops. ``write_epoch`` lets a reader of
the database's total tell whether a write overlapped its read.

A record that will never be written (the database refused it, or a full buffer dropped it) was still spent at the
backend: its spend leaves the buffer's count for ``unstored_spend``, which budgets add for the rest of its calendar
month (UTC), so a key cannot run past its budget through records the database would not take. That count is this
process's own and lives in its memory: other replicas' budgets, the alerts (which read the database), usage reports
and a restarted process do not see it; ``registry_usage_unstored_cost_total`` and the error log (with the request
ids) do. The usual cause of a refusal, a backend's string longer than its column (a finish reason), no longer is
one: ``storable`` cuts it to fit.

An erased unit (``registry.experiments.privacy``) is remembered by its digest for ``ERASED_SECONDS`` once its
erasure committed (its change, heard here: ``forget_unit``): a record of it added meanwhile (a completion in flight
during the erasure) is buffered without the unit, its request id and texts, as are buffered ones and those of a
batch taken before the erasure whose write failed. The erasing process anonymises its buffered records and waits
for the batches being written before its own update (``erase_unit``), so that update counts them.

News of an erasure reaches the other replicas later (pub/sub), so a batch may be written after an erasure this
replica has not heard of yet. Each batch, once committed, is checked against the durable record of erasures (their
audit entries, by the digests of its units), and the completions of a unit erased within ``ERASED_SECONDS`` before
they were created, or since, are anonymised again; a check that fails is retried by the next flush. It runs after
the commit and shares ``ERASURE_LOCK``, which an erasure holds alone from before its update until it ends, for the
reason given in ``registry.experiments.exposures``: on PostgreSQL (READ COMMITTED) an erasure's update does not see
rows not yet committed, and the lock makes the check read after any erasure whose update may have missed the batch
(SQLite runs one writing transaction at a time).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.models import CompletionRecord
from registry.completions.pricing import month_start
from registry.completions.repository import CompletionRepository
from registry.db.base import utcnow
from registry.db.batches import write_isolating
from registry.db.text import NUL, column_lengths, holds_nul, without_nul
from registry.experiments.privacy_digest import ERASURE_IN_FLIGHT_SECONDS, unit_digest
from registry.experiments.repository import IngestRepository, UnitDataRepository
from registry.lib.logging import error_text

logger = structlog.get_logger("registry.completions.usage")

_NO_COST = 1e-12  # what is left of a cost after adding and taking away the same floats
# How long an erased unit's records are anonymised as they come: longer than any completion runs (as the exact
# cache's tombstones, registry.completions.cache.IN_FLIGHT_SECONDS).
ERASED_SECONDS = ERASURE_IN_FLIGHT_SECONDS
_ANONYMISED = {"unit": None, "request_id": None, "prompt_text": None, "completion_text": None}

Spend = dict[str, tuple[int, float]]  # per API key: tokens and cost
WrittenListener = Callable[[Spend], None]
AddedListener = Callable[[dict[str, Any]], None]
UnstoredListener = Callable[[str, int, float], None]  # why (refused, overflow), how many records, their cost

# The length of each of a record's varchar columns: a longer value is cut to it (``storable``).
_COLUMN_LENGTHS = column_lengths(CompletionRecord)


def storable(record: dict[str, Any]) -> None:
    """Replace each NUL in the record's text (and in its JSON, the guards' outcomes) with U+FFFD, and cut each
    string longer than its column to its length, in place.

    PostgreSQL text and JSON cannot hold a NUL, nor a ``varchar(n)`` more than n characters, and some of a record's
    text cannot be refused at the door: the model's answer, a prompt rendered from variables that held one, the
    backend's finish reason (``registry.db.text``). Such a record was refused whole, and its tokens and cost were
    missing from usage reports and alerts. What the caller names (prompt, unit, request id) is checked at the door.
    """
    for name, value in record.items():  # once per completion: classes compared, a copy made only for a NUL
        kind = value.__class__
        if kind is str:
            if NUL in value:
                value = record[name] = without_nul(value)
            length = _COLUMN_LENGTHS.get(name)
            if length is not None and len(value) > length:
                record[name] = value[:length]
        elif (kind is list or kind is dict) and holds_nul(value):
            record[name] = without_nul(value)


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
        self._added_listeners: list[AddedListener] = []
        self._unstored_listeners: list[UnstoredListener] = []
        # Per API key: the month (its start) and the tokens and cost of its records that will never be written.
        self._unstored: dict[str, tuple[datetime, int, float]] = {}
        # Odd while a batch is being written; a read that starts and ends on the same even value
        # saw no write begin or commit.
        self.write_epoch = 0
        self.dropped = 0
        self.refused = 0  # records the database refused (their data, not its state): dropped, logged with their ids
        self._erased: dict[str, float] = {}  # digest of an erased unit -> until when its records are anonymised
        self._erasing_here: Counter[str] = Counter()  # digests this process's erasures are anonymising in the database
        self._flushing: set[asyncio.Event] = set()  # one per batch being written, set once its write ended
        self._to_check: dict[str, float] = {}  # units of committed batches -> first created (Unix time), until checked

    def on_written(self, listener: WrittenListener) -> None:
        """Call ``listener`` with the spend of each batch, in the step that takes it off the pending spend."""
        self._listeners.append(listener)

    def on_unstored(self, listener: UnstoredListener) -> None:
        """Call ``listener`` with why, how many and the cost of the records given up on (refused or dropped)."""
        self._unstored_listeners.append(listener)

    def on_added(self, listener: AddedListener) -> None:
        """Call ``listener`` with each record as it is added, in line (once: a listener already here is not added).

        An evaluation run charges each record made in its task to the attempt it was made for
        (``registry.evals.runner.charge_attempt``), a model guard's classifier's records among them.
        """
        if listener not in self._added_listeners:
            self._added_listeners.append(listener)

    def add(self, record: dict[str, Any]) -> None:
        """Buffer one record; its spend is added to the pending totals in line (once per completion, so cheap)."""
        for listener in self._added_listeners:
            listener(record)
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
            self._give_up(self._buffer[:overflow], "overflow")
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

    def _give_up(self, records: list[dict[str, Any]], reason: str) -> Spend:
        """``records`` will never be written: their spend moves from the pending count to the unstored one, which
        budgets keep counting until the month they were made in ends."""
        spend = spend_of(records)
        self._move_pending(spend, sign=-1)
        current = month_start(utcnow())
        for key in list(self._unstored):  # a past month's: its budget has reset
            if self._unstored[key][0] != current:
                del self._unstored[key]
        for key, (tokens, cost) in spend_of(r for r in records if _month_of(r) == current).items():
            _, unstored_tokens, unstored_cost = self._unstored.get(key, (current, 0, 0.0))
            self._unstored[key] = (current, unstored_tokens + tokens, unstored_cost + cost)
        total_cost = sum(cost for _, cost in spend.values())
        for listener in self._unstored_listeners:
            listener(reason, len(records), total_cost)
        return spend

    def unstored_spend(self, key: str) -> tuple[int, float]:
        """Tokens and cost of ``key`` this month (UTC) in records this process gave up on: the database refused
        them, or a full buffer dropped them. Spent at the backend all the same, so budgets count them."""
        entry = self._unstored.get(key)
        if entry is None or entry[0] != month_start(utcnow()):
            return 0, 0.0
        return entry[1], entry[2]

    def forget_unit(self, digest: str) -> tuple[int, int]:
        """The erasure of the unit of ``digest`` committed: its buffered completions, and those recorded in the
        next ``ERASED_SECONDS``, are written without it, their request ids and texts.

        Returns how many buffered records were the unit's and how many of them held texts.
        """
        self._remember(digest, time.time())
        return self._anonymise_buffered(digest)

    def _remember(self, digest: str, erased_at: float) -> None:
        """Anonymise the unit's records until ``ERASED_SECONDS`` after its erasure (``erased_at``, Unix time)."""
        self._prune_erased()
        until = time.monotonic() + (erased_at + ERASED_SECONDS - time.time())
        self._erased[digest] = max(self._erased.get(digest, until), until)

    def _anonymise_buffered(self, digest: str) -> tuple[int, int]:
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
        """This process is about to erase ``unit``: anonymise its buffered records, wait for the batches being
        written meanwhile to end, and anonymise those a failed write put back.

        Call it before the erasure's session holds a connection (a flush takes one of its own). Once it returns,
        every record of the unit then buffered is either anonymised in the buffer (counted here) or committed with
        the unit, for the erasure's update to anonymise and count; none is being written. The erasure is not
        remembered here: it may still fail and roll back (what was anonymised stays so: the erasure was asked
        for). Once it commits, its change reaches ``forget_unit``. Returns as ``forget_unit``.
        """
        digest = unit_digest(unit)
        self._erasing_here[digest] += 1
        try:
            forgotten, with_text = self._anonymise_buffered(digest)
            writing = list(self._flushing)
            if writing:
                await asyncio.gather(*(written.wait() for written in writing))
                restored, restored_with_text = self._anonymise_buffered(digest)  # a batch whose write failed is back
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
        """Write the buffered records in one transaction (kept for the next flush on failure); then check the units
        written, and those a failed check left, against the erasures committed meanwhile.

        Their text is made storable first (``storable``). A batch the database refuses for its data is written in
        parts (``write_isolating``): the records it refuses alone are dropped and logged with their request ids, so
        one cannot hold back every later record; one that fails otherwise (the database unreachable) is kept."""
        if not self._buffer:
            await self._check_written()
            return
        batch, self._buffer = self._buffer, []
        if self._erased:  # records a failed write put back while an erasure here waited for it
            self._prune_erased()
            self._anonymise(batch, self._erased_units(batch))
        for record in batch:
            storable(record)
        self.write_epoch += 1
        ended = asyncio.Event()
        self._flushing.add(ended)
        try:
            outcome = await write_isolating(batch, self._write)
            if outcome.unwritten:
                unwritten = outcome.unwritten
                self._anonymise(unwritten, self._erased_units(unwritten, skip_erasing_here=True))
                self._buffer[:0] = unwritten
                logger.warning(
                    "could not write usage records; will retry", error=str(outcome.error), pending=len(self._buffer)
                )
        finally:
            self.write_epoch += 1
            self._flushing.discard(ended)
            ended.set()
        if outcome.refused:
            refused = [record for record, _ in outcome.refused]
            unstored = self._give_up(refused, "refused")
            self.refused += len(refused)
            logger.error(
                "usage records refused by the database; dropped, their spend still counted against budgets here",
                request_ids=[record.get("request_id") for record in refused],
                error=str(outcome.refused[0][1]),
                dropped=len(refused),
                unstored={key: {"tokens": tokens, "cost": cost} for key, (tokens, cost) in unstored.items()},
            )
        batch = outcome.written
        if not batch:
            return
        written = spend_of(batch)
        self._move_pending(written, sign=-1)
        for listener in self._listeners:
            listener(written)
        now = time.time()
        for record in batch:
            if record.get("unit"):
                created = record.get("created_at")
                at = created.timestamp() if isinstance(created, datetime) else now
                self._to_check[record["unit"]] = min(self._to_check.get(record["unit"], at), at)
        await self._check_written()

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        async with self._sessionmaker() as session, session.begin():
            await CompletionRepository(session).add_records(batch)
            # Completions are observations of experiment metrics: the aggregator recomputes their units.
            await IngestRepository(session).mark_units_changed({r["unit"] for r in batch if r.get("unit")})

    async def _check_written(self) -> None:
        """Anonymise again the completions of the units of committed batches erased within ``ERASED_SECONDS``
        before their records were created, or since (by the durable record of erasures: this replica may not have
        heard of them yet); learn of those erasures. On failure the units are kept for the next flush."""
        written, self._to_check = self._to_check, {}
        if not written:
            return
        digests = {unit: unit_digest(unit) for unit in written}
        try:
            async with self._sessionmaker() as session, session.begin():
                erased = await UnitDataRepository(session).erasures_covering(
                    set(digests.values()), min(written.values())
                )
                units = {
                    unit
                    for unit, at in written.items()
                    if digests[unit] in erased and erased[digests[unit]].timestamp() > at - ERASED_SECONDS
                }
                repository = CompletionRepository(session)
                for unit in sorted(units):
                    await repository.anonymise_unit(unit)
        except Exception as exc:
            for unit, first in written.items():
                self._to_check[unit] = min(self._to_check.get(unit, first), first)
            logger.error("could not check written completions against the erasures; retrying", error=error_text(exc))
            return
        for digest, erased_at in erased.items():
            self._remember(digest, erased_at.timestamp())


def _month_of(record: dict[str, Any]) -> datetime:
    """The start of the UTC month a record was made in (now, for one without a time of its own)."""
    created = record.get("created_at")
    return month_start(created if isinstance(created, datetime) and created.tzinfo is not None else utcnow())
