"""What guards did over a period, counted per config and guard for the console's usage page.

Completions record their guards' outcomes as a JSON list (``completions.guard_outcomes``); the
repository reads the lists of a period's guarded completions and ``count_outcomes`` adds them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from registry.completions.models import CompletionRecord

OUTCOMES = ("blocked", "redacted", "flagged", "passed", "error")


@dataclass(slots=True)
class GuardCount:
    """Completions of one config whose guard of this name had each outcome (input and output together)."""

    config: str
    guard: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def count_outcomes(rows: Iterable[tuple[str | None, Sequence[dict[str, Any]]]]) -> list[GuardCount]:
    """Per (config, guard), how many outcomes of each kind ``rows`` (config, outcomes) hold; most first."""
    found: dict[tuple[str, str], GuardCount] = {}
    for config, outcomes in rows:
        for outcome in outcomes:
            # A fallback config's guard names its config (registry.guards.engine.fallback_guards).
            key = (str(outcome.get("config") or config or ""), str(outcome.get("guard", "")))
            count = found.setdefault(key, GuardCount(*key))
            kind = outcome.get("outcome")
            if kind in count.counts:
                count.counts[kind] += 1
    return sorted(found.values(), key=lambda c: (-c.total, c.config, c.guard))


class GuardOutcomeRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def outcomes(
        self, *, since: datetime, until: datetime, limit: int
    ) -> tuple[list[tuple[str | None, list[dict[str, Any]]]], bool]:
        """The newest ``limit`` guarded completions' (config, outcomes) in [since, until); and whether more were."""
        query = (
            select(CompletionRecord.config, CompletionRecord.guard_outcomes)
            .where(
                CompletionRecord.created_at >= since,
                CompletionRecord.created_at < until,
                CompletionRecord.guard_outcomes.is_not(None),
            )
            .order_by(CompletionRecord.id.desc())
            .limit(limit + 1)
        )
        rows = [(config, list(outcomes or [])) for config, outcomes in (await self.session.execute(query)).all()]
        return rows[:limit], len(rows) > limit
