"""Per-key monthly budgets, checked before each completion without a database read when warm.

Budgets are cached briefly and dropped when changed (through the change bus,
so on every replica); spend is the database's total for the month plus what
this process has buffered but not written yet. Other replicas' unwritten
spend is missed for at most one flush interval, so a key may overshoot its
budget by a few requests: budgets are a guard rail, not an invoice.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.errors import OverBudgetError
from registry.completions.pricing import budget_problem, month_start
from registry.completions.repository import CompletionRepository
from registry.completions.usage import UsageRecorder
from registry.db.base import utcnow
from registry.lib.cache import TTLCache
from registry.lib.changes import Change, ChangeBus

_BUDGET_SECONDS = 30.0
_SPEND_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Budget:
    monthly_tokens: int | None
    monthly_cost: float | None

    @property
    def unlimited(self) -> bool:
        return self.monthly_tokens is None and self.monthly_cost is None


UNLIMITED = Budget(None, None)


class BudgetGuard:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], bus: ChangeBus, recorder: UsageRecorder) -> None:
        self._sessionmaker = sessionmaker
        self._recorder = recorder
        self._budgets: TTLCache[str, Budget] = TTLCache(10_000)
        self._spend: TTLCache[str, tuple[int, float]] = TTLCache(10_000)
        bus.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        if change.kind == "api_key":
            self._budgets.pop(change.name)
            self._spend.pop(change.name)
        elif change.kind == "reset":
            self._budgets.clear()

    async def check(self, key: str) -> None:
        """Raise ``OverBudgetError`` when ``key`` has used up a monthly budget."""
        budget = self._budgets.get(key)
        if budget is None:
            async with self._sessionmaker() as session:
                row = await CompletionRepository(session).budget_of(key)
            budget = Budget(row.monthly_tokens, row.monthly_cost) if row else UNLIMITED
            self._budgets.set(key, budget, _BUDGET_SECONDS)
        if budget.unlimited:
            return
        tokens, cost = await self.spend(key)
        problem = budget_problem(
            used_tokens=tokens, used_cost=cost, token_budget=budget.monthly_tokens, cost_budget=budget.monthly_cost
        )
        if problem is not None:
            raise OverBudgetError(
                f"{problem}; the budget resets on the first day of next month (UTC)",
                headers={"Retry-After": str(_seconds_to_next_month())},
            )

    async def spend(self, key: str) -> tuple[int, float]:
        """Tokens and cost of ``key`` this month: written plus buffered."""
        written = self._spend.get(key)
        if written is None:
            async with self._sessionmaker() as session:
                written = await CompletionRepository(session).month_usage(key, month_start(utcnow()))
            self._spend.set(key, written, _SPEND_SECONDS)
        pending_tokens, pending_cost = self._recorder.pending_spend(key)
        return written[0] + pending_tokens, written[1] + pending_cost


def _seconds_to_next_month() -> int:
    now = utcnow()
    start = month_start(now)
    following = (
        start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    )
    return max(1, int((following - now).total_seconds()))
