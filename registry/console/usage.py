"""The usage page's figures from the usage report's rows: pure, so its totals are the report's totals.

Rows come grouped by day and by one dimension (prompt or key); each day of the window gets a bar,
each of the largest groups a layer of it, and the rest one "Other" layer, so a chart stays legible
with a thousand prompts while its totals still add up to the report's. With many groups the page
reads the per-day rows of the largest ones only (``shown_groups``, from the report by group) and
the rest already summed per day, rather than a row per day and group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from markupsafe import Markup

from registry.completions.schemas import UsageRow
from registry.console import formatting
from registry.console.charts import SERIES_COLOURS, Series, stacked_bars

UsageBy = Literal["prompt", "key"]
OTHER = "Other"
NONE_LABEL = "(none)"
# Completions through the OpenAI door's ``config:`` models run no prompt; they are recorded with an empty one.
NO_PROMPT_LABEL = "(config models, no prompt)"


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """One layer of the charts and one row of their legend table."""

    label: str
    colour: int
    requests: int
    tokens: int
    cost: float
    token_share: float


@dataclass(frozen=True, slots=True)
class UsageDay:
    day: date
    requests: int
    tokens: int
    cost: float


@dataclass(frozen=True, slots=True)
class UsageFigures:
    requests: int
    tokens: int
    cost: float
    groups: list[UsageGroup]
    days: list[UsageDay]
    tokens_chart: Markup
    cost_chart: Markup


def day_of(value: date | str | None) -> date | None:
    """A row's day: SQLite's ``date()`` gives text where PostgreSQL gives a date."""
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value[:10])


def window(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _label(row: UsageRow, by: UsageBy, labels: Mapping[str, str]) -> str:
    value = row.prompt if by == "prompt" else row.key
    if value is None:
        return NONE_LABEL
    if by == "prompt" and value == "":
        return NO_PROMPT_LABEL
    return labels.get(value, value)


def shown_groups(totals: Sequence[UsageRow], *, by: UsageBy, labels: Mapping[str, str]) -> list[str | None] | None:
    """The prompts or keys the charts show apart, from the report grouped by them alone; None: all of them fit.

    The same ranking as ``usage_figures``: most tokens, then most cost, then by label.
    """
    if len(totals) <= SERIES_COLOURS:
        return None
    ranked = sorted(
        totals, key=lambda row: (-(row.input_tokens + row.output_tokens), -row.cost, _label(row, by, labels))
    )
    return [row.prompt if by == "prompt" else row.key for row in ranked[: SERIES_COLOURS - 1]]


def usage_figures(
    rows: Sequence[UsageRow],
    *,
    by: UsageBy,
    first: date,
    last: date,
    labels: Mapping[str, str],
    other: Sequence[UsageRow] | None = None,
) -> UsageFigures:
    """Totals, the largest groups (the rest as "Other"), per-day sums and the two charts.

    ``other``: the usage per day of the groups not in ``rows`` (``shown_groups``), the "Other" layer.
    """
    days = window(first, last)
    index = {day: i for i, day in enumerate(days)}
    requests: defaultdict[str, int] = defaultdict(int)
    day_requests = [0] * len(days)
    tokens: defaultdict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    costs: defaultdict[str, list[float]] = defaultdict(lambda: [0.0] * len(days))

    def add(label: str, row: UsageRow) -> None:
        requests[label] += row.requests
        position = index.get(day_of(row.day))  # type: ignore[arg-type]  # None finds nothing
        if position is not None:
            day_requests[position] += row.requests
            tokens[label][position] += row.input_tokens + row.output_tokens
            costs[label][position] += row.cost

    for row in rows:
        add(_label(row, by, labels), row)
    ranked = sorted(requests, key=lambda label: (-sum(tokens[label]), -sum(costs[label]), label))
    if other is not None:
        for row in other:
            add(OTHER, row)
        ranked.append(OTHER)
    elif len(ranked) > SERIES_COLOURS:
        kept, rest = ranked[: SERIES_COLOURS - 1], ranked[SERIES_COLOURS - 1 :]
        requests[OTHER] = sum(requests[label] for label in rest)
        tokens[OTHER] = [sum(tokens[label][i] for label in rest) for i in range(len(days))]
        costs[OTHER] = [sum(costs[label][i] for label in rest) for i in range(len(days))]
        ranked = [*kept, OTHER]
    total_tokens = sum(sum(tokens[label]) for label in ranked)
    groups = [
        UsageGroup(
            label=label,
            colour=colour,
            requests=requests[label],
            tokens=sum(tokens[label]),
            cost=sum(costs[label]),
            token_share=sum(tokens[label]) / total_tokens if total_tokens else 0.0,
        )
        for colour, label in enumerate(ranked)
    ]
    per_day = [
        UsageDay(
            day=day,
            requests=day_requests[i],
            tokens=sum(tokens[label][i] for label in ranked),
            cost=sum(costs[label][i] for label in ranked),
        )
        for i, day in enumerate(days)
    ]
    ticks = [day.strftime("%m-%d") for day in days]
    noun = "prompt" if by == "prompt" else "API key"
    span = f"{formatting.day(first)} to {formatting.day(last)} (UTC)"
    return UsageFigures(
        requests=sum(requests[label] for label in ranked),
        tokens=total_tokens,
        cost=sum(g.cost for g in groups),
        groups=groups,
        days=per_day,
        tokens_chart=stacked_bars(
            chart_id="tokens-chart",
            title=f"Tokens per day by {noun}",
            description=f"{formatting.count(total_tokens)} tokens from {span}; the table beside lists each {noun}.",
            categories=ticks,
            series=[Series(label, tokens[label], colour) for colour, label in enumerate(ranked)],
            x_label="Day (UTC)",
            y_label="Tokens",
            format_value=lambda value: formatting.count(round(value)),
            format_tick=formatting.count_tick,
        ),
        cost_chart=stacked_bars(
            chart_id="cost-chart",
            title=f"Cost per day by {noun}",
            description=f"{formatting.cost(sum(g.cost for g in groups))} from {span}; the table beside lists each "
            f"{noun}.",
            categories=ticks,
            series=[Series(label, costs[label], colour) for colour, label in enumerate(ranked)],
            x_label="Day (UTC)",
            y_label="Cost",
            format_value=formatting.cost,
            format_tick=formatting.cost_tick,
        ),
    )
