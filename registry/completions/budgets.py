"""Per-key monthly budgets, checked before each completion without a database read when warm.

Budgets are cached briefly and dropped when changed (through the change bus,
so on every replica); spend is the database's total for the month as of one
read plus everything this process recorded after that read: what a flush wrote
since moves into the cached total in the step that takes it off the buffer's
count, so a flush never makes spend drop. A read that a flush overlapped is
ambiguous (it may or may not include the batch), so it is read again.

A key's budget and its spend are each read once per expiry however many of its
requests miss them together (``SingleFlight``): the others wait for that read, and
share its failure when it fails (the request fails, as with a read of its own).

A completion is charged after it ends, so each one running holds a reservation of the most it may spend
(its prompt's upper bound plus its max_tokens, at its config's prices) until it is recorded: a key is refused
while its spend plus its reservations reach a limit. Without them, every request a key sent at once passed
the check before any was charged: twenty parallel requests on a budget of one spent twenty times it. Now
within one process a key overshoots by at most one completion (with configs that set max_tokens: one that
does not holds its prompt only). Other replicas' reservations and unwritten
spend are missed for at most one flush interval: budgets are a guard rail, not an invoice.

Spend in records that will never be written (the database refused them, a full
buffer dropped them) is counted too, until their month ends
(``UsageRecorder.unstored_spend``); it is known only to the process that gave
them up, so other replicas, and this one after a restart, miss it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.errors import BudgetHeldError, OverBudgetError
from registry.completions.pricing import budget_problem, month_start
from registry.completions.repository import CompletionRepository
from registry.completions.usage import Spend, UsageRecorder
from registry.db.base import utcnow
from registry.db.engine import READ_ONLY
from registry.lib.cache import TTLCache
from registry.lib.changes import Change, ChangeBus
from registry.lib.single_flight import SingleFlight

_BUDGET_SECONDS = 30.0
_SPEND_SECONDS = 5.0
_READ_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Budget:
    monthly_tokens: int | None
    monthly_cost: float | None

    @property
    def unlimited(self) -> bool:
        return self.monthly_tokens is None and self.monthly_cost is None


UNLIMITED = Budget(None, None)
_IN_FLIGHT_RETRY_SECONDS = 1


@dataclass(slots=True)
class Reservation:
    """The most a completion in flight may spend, counted against its key's budget until it is recorded."""

    key: str
    tokens: int
    cost: float
    released: bool = False


@dataclass(slots=True)
class _Held:
    """A key's reservations: how many, and the tokens and cost they hold."""

    count: int = 0
    tokens: int = 0
    cost: float = 0.0


@dataclass(slots=True)
class _Written:
    """A key's spend in the database as of one read, plus the batches this process wrote since."""

    tokens: int
    cost: float


class BudgetGuard:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: ChangeBus,
        recorder: UsageRecorder,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._recorder = recorder
        self._budgets: TTLCache[str, Budget] = TTLCache(10_000, clock)
        self._spend: TTLCache[str, _Written] = TTLCache(10_000, clock)
        self._budget_reads: SingleFlight[str, Budget] = SingleFlight()
        self._spend_reads: SingleFlight[str, _Written] = SingleFlight()
        self._generation = 0  # changes seen: a read that a change overlapped is not cached
        self._held: dict[str, _Held] = {}  # by key: the reservations of its completions in flight
        self._releases: dict[str, asyncio.Event] = {}  # by key: set when one of its reservations is released
        bus.subscribe(self._on_change)
        recorder.on_written(self._on_written)

    def _on_change(self, change: Change) -> None:
        if change.kind == "api_key":
            self._budgets.pop(change.name)
            self._spend.pop(change.name)
            self._budget_reads.forget(change.name)
            self._spend_reads.forget(change.name)
        elif change.kind == "reset":
            self._budgets.clear()
            self._budget_reads.forget_all()
        else:
            return
        self._generation += 1

    def _on_written(self, written: Spend) -> None:
        """A flush moved this spend from the buffer to the database: count it in the cached totals instead."""
        for key, (tokens, cost) in written.items():
            total = self._spend.get(key)
            if total is not None:
                total.tokens += tokens
                total.cost += cost

    async def check(self, key: str) -> None:
        """Raise ``OverBudgetError`` when ``key`` has used up a monthly budget."""
        budget = await self._budget(key)
        if budget.unlimited:
            return
        tokens, cost = await self.spend(key)
        self._refuse_if_spent(budget, tokens, cost)

    async def reserve(self, key: str, most: Callable[[], tuple[int, float]]) -> Reservation | None:
        """Hold the tokens and cost ``most`` gives against ``key``'s budget until ``release``; None for a key
        without one (``most`` is then not called).

        Refused (``OverBudgetError``) when the key's spend reaches a limit, and (``BudgetHeldError``) when its
        spend plus the reservations of its completions already in flight do; this one may then overshoot it,
        alone. From the spend read to the reservation nothing is awaited, so requests reserving at once each see
        the others'.
        """
        budget = await self._budget(key)
        if budget.unlimited:
            return None
        used_tokens, used_cost = await self.spend(key)
        self._refuse_if_spent(budget, used_tokens, used_cost)
        held = self._held.get(key) or _Held()
        if budget_problem(
            used_tokens=used_tokens + held.tokens,
            used_cost=used_cost + held.cost,
            token_budget=budget.monthly_tokens,
            cost_budget=budget.monthly_cost,
        ):
            raise BudgetHeldError(
                f"this API key's {held.count} completion(s) in flight may use the rest of its monthly budget; "
                "retry when they have ended",
                headers={"Retry-After": str(_IN_FLIGHT_RETRY_SECONDS)},
            )
        tokens, cost = most()
        held.count += 1
        held.tokens += tokens
        held.cost += cost
        self._held[key] = held
        return Reservation(key, tokens, cost)

    def release(self, reservation: Reservation | None) -> None:
        """The completion was recorded (its spend is counted now) or ended without running: drop its hold."""
        if reservation is None or reservation.released:
            return
        reservation.released = True
        released = self._releases.pop(reservation.key, None)
        if released is not None:
            released.set()
        held = self._held.get(reservation.key)
        if held is None:
            return
        held.count -= 1
        if held.count <= 0:
            del self._held[reservation.key]  # no sum of float costs left behind
        else:
            held.tokens -= reservation.tokens
            held.cost -= reservation.cost

    async def released(self, key: str) -> None:
        """Return when one of ``key``'s reservations is released (at once when it holds none): what a caller
        refused with ``BudgetHeldError`` waits for before it asks again."""
        if key not in self._held:
            return
        event = self._releases.get(key)
        if event is None:
            event = self._releases[key] = asyncio.Event()
        await event.wait()

    async def _budget(self, key: str) -> Budget:
        budget = self._budgets.get(key)
        if budget is None:
            budget = await self._budget_reads.load(key, lambda: self._read_budget(key))
        return budget

    @staticmethod
    def _refuse_if_spent(budget: Budget, tokens: int, cost: float) -> None:
        problem = budget_problem(
            used_tokens=tokens, used_cost=cost, token_budget=budget.monthly_tokens, cost_budget=budget.monthly_cost
        )
        if problem is not None:
            raise OverBudgetError(
                f"{problem}; the budget resets on the first day of next month (UTC)",
                headers={"Retry-After": str(_seconds_to_next_month())},
            )

    async def _read_budget(self, key: str) -> Budget:
        generation = self._generation
        async with self._sessionmaker() as session:
            await session.connection(execution_options=READ_ONLY)  # no write lock on SQLite for a read
            row = await CompletionRepository(session).budget_of(key)
        budget = Budget(row.monthly_tokens, row.monthly_cost) if row else UNLIMITED
        if generation == self._generation:  # else a change overlapped the read: the next check reads again
            self._budgets.set(key, budget, _BUDGET_SECONDS)
        return budget

    async def spend(self, key: str, *, session: AsyncSession | None = None) -> tuple[int, float]:
        """Tokens and cost of ``key`` this month: written plus buffered, plus what this process could not write.

        A caller inside a request passes its ``session``: a second one would wait for the pool
        while the request holds a connection (SQLite's pool has only one). Such a caller reads on
        its own rather than wait for a shared read, which may be waiting for that very connection.
        """
        written = self._spend.get(key)
        if written is None:
            if session is None:
                written = await self._spend_reads.load(key, lambda: self._read_written(key, None))
            else:
                written = await self._read_written(key, session)
        pending_tokens, pending_cost = self._recorder.pending_spend(key)
        unstored_tokens, unstored_cost = self._recorder.unstored_spend(key)
        return written.tokens + pending_tokens + unstored_tokens, written.cost + pending_cost + unstored_cost

    async def _read_written(self, key: str, session: AsyncSession | None) -> _Written:
        """The month's total in the database, read when no flush of this process overlapped the read."""
        for _ in range(_READ_ATTEMPTS):
            epoch = self._recorder.write_epoch
            tokens, cost = await self._month_usage(key, session)
            if epoch % 2 == 0 and self._recorder.write_epoch == epoch:
                written = _Written(tokens, cost)
                self._spend.set(key, written, _SPEND_SECONDS)
                return written
        # Flushes kept overlapping: use the last read once, uncached (it may miss one batch).
        return _Written(tokens, cost)

    async def _month_usage(self, key: str, session: AsyncSession | None) -> tuple[int, float]:
        since = month_start(utcnow())
        if session is not None:
            return await CompletionRepository(session).month_usage(key, since)
        async with self._sessionmaker() as own_session:
            await own_session.connection(execution_options=READ_ONLY)
            return await CompletionRepository(own_session).month_usage(key, since)


def _seconds_to_next_month() -> int:
    now = utcnow()
    start = month_start(now)
    following = (
        start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    )
    return max(1, int((following - now).total_seconds()))
