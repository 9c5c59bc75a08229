"""How numbers and times read on console pages; the browser tests format the API's values with these too."""

from __future__ import annotations

from datetime import datetime


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def number(value: float | None) -> str:
    """Four significant digits: enough to compare variants, short enough to scan."""
    return "—" if value is None else f"{value:.4g}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def signed_percent(value: float | None) -> str:
    """A relative effect: +3.10% or -0.42%."""
    return "—" if value is None else f"{value * 100:+.2f}%"
