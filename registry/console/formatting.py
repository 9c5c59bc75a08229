"""How numbers and times read on console pages; the browser tests format the API's values with these too.

One precision per kind of number, so a column reads the same on every row: estimates (means,
interval ends) at four significant digits with their trailing zeros, p-values at four decimals,
shares and effects as percentages at two decimals, counts with thousands separators.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime

_SMALLEST_P = 1e-4
_SMALLEST_COST = 1e-4


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def day(value: date) -> str:
    return value.strftime("%Y-%m-%d")


def _missing(value: float) -> bool:
    """NaN or infinity (a statistic of too little data): no number to show, never 'nan' or 'inf'."""
    return not math.isfinite(value)


def _unsigned_zero(text: str) -> str:
    """A value that rounds to zero reads as zero, not as '-0' or '-0.00%'."""
    return text[1:] if text.startswith("-") and not text.strip("-0.%") else text


def number(value: float | None) -> str:
    """A setting such as alpha or a threshold: as short as it was written (0.05, 0.001); from a thousand up, whole
    and grouped (86,400 seconds, not 8.64e+04)."""
    if value is None or _missing(value):
        return "—"
    if abs(value) >= 1000:
        return f"{round(value):,}"
    return _unsigned_zero(f"{value:.4g}")


def estimate(value: float | None) -> str:
    """A mean or an interval end: four significant digits, trailing zeros kept (0.3810, 0.09175, 12.00)."""
    if value is None or _missing(value):
        return "—"
    if value == 0:
        return "0.000"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    if abs(value) < 0.001:
        return f"{value:.3e}"
    return f"{value:#.4g}".rstrip(".")


def p_value(value: float | None) -> str:
    """Four decimals; below that, an upper bound (a p-value of exactly 0 is never meant)."""
    if value is None or _missing(value):
        return "—"
    return f"< {_SMALLEST_P:.4f}" if value < _SMALLEST_P else f"{value:.4f}"


def count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def cost(value: float | None) -> str:
    """Money in the deployment's price unit: cents from a dollar up, four decimals below (a cent's hundredths)."""
    if value is None:
        return "—"
    if value == 0:
        return "$0.00"
    if abs(value) < _SMALLEST_COST:
        return f"< ${_SMALLEST_COST:.4f}"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"


def decimals_for(step: float) -> int:
    """Decimals that tell apart ticks ``step`` apart (0 for whole steps)."""
    return 0 if step >= 1 else math.ceil(-math.log10(step) - 1e-9)


def count_tick(value: float, step: float) -> str:
    return f"{value:,.{decimals_for(step)}f}"


def cost_tick(value: float, step: float) -> str:
    """A chart axis's money, every tick with the same decimals: $0.00, $0.02 … or $0.000002, $0.000004 …"""
    return f"${value:,.{max(2, decimals_for(step))}f}"


def percent_tick(value: float, step: float) -> str:
    """A relative effect's axis tick, with the decimals its step needs: -0.4%, -0.2%, 0%, +0.2% for effects under a
    percent, where whole percents read -0%, -0%, 0%, +0%."""
    if abs(value) < step / 2:
        return "0%"
    return f"{value * 100:+.{decimals_for(step * 100)}f}%"


def percent(value: float | None) -> str:
    return "—" if value is None or _missing(value) else _unsigned_zero(f"{value * 100:.2f}%")


def signed_percent(value: float | None) -> str:
    """A relative effect: +3.10% or -0.42%."""
    if value is None or _missing(value):
        return "—"
    text = f"{value * 100:+.2f}%"
    return "0.00%" if text in ("+0.00%", "-0.00%") else text


def pretty_json(value: object, indent: int | None = 2) -> str:
    """A JSON value as text, characters as they are (the page escapes them): variables, evidence, rules."""
    return json.dumps(value, indent=indent, ensure_ascii=False, sort_keys=True, default=str)
