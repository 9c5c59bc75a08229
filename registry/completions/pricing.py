"""Cost of a completion and the calendar month a budget covers, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime


def completion_cost(
    input_tokens: int, output_tokens: int, *, input_price_per_mtok: float, output_price_per_mtok: float
) -> float:
    """Cost in the config's currency: prices are per million tokens."""
    cost = (input_tokens * input_price_per_mtok + output_tokens * output_price_per_mtok) / 1_000_000
    return round(cost, 12)


def month_start(now: datetime) -> datetime:
    """Start of the UTC calendar month ``now`` is in: budgets reset then."""
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def budget_problem(
    *, used_tokens: int, used_cost: float, token_budget: int | None, cost_budget: float | None
) -> str | None:
    """Why a key may not run another completion this month, or None when it may."""
    if token_budget is not None and used_tokens >= token_budget:
        return f"this API key used {used_tokens} of its {token_budget} tokens for this month"
    if cost_budget is not None and used_cost >= cost_budget:
        return f"this API key used {used_cost:.4f} of its {cost_budget:.4f} cost budget for this month"
    return None
