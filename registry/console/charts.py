"""Charts drawn by the server as SVG markup: no script, every text escaped, a title and a description.

Pure functions of their data, so a page's chart is tested like any other value. Colours come
from the stylesheet (``series-N`` classes), which the page's legend table uses as well; the
Content-Security-Policy allows no inline style.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

SERIES_COLOURS = 8  # series-0 … series-7 in console.css; the last one is "everything else"
_WIDTH, _HEIGHT = 760, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 84, 12, 14, 46
_MAX_X_LABELS = 10


@dataclass(frozen=True, slots=True)
class Series:
    """One stacked layer: a value per category, in the categories' order."""

    name: str
    values: Sequence[float]
    colour: int  # index of its series-N class


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (1 for nothing to show)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def axis_ticks(top: float) -> list[float]:
    """Evenly spaced round ticks from 0 to a ``nice_ceiling``: steps of 0.2 or 1 times a power of ten, or 0.5 for 2."""
    leading = round(top / 10 ** math.floor(math.log10(top)))
    count = 4 if leading == 2 else 5
    return [top * i / count for i in range(count + 1)]


def _number(value: float) -> str:
    """Coordinates with two decimals: short markup, exact enough for a screen."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def stacked_bars(
    *,
    chart_id: str,
    title: str,
    description: str,
    categories: Sequence[str],
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    format_value: Callable[[float], str],
    format_tick: Callable[[float, float], str],
) -> Markup:
    """A stacked bar chart: one bar per category, one segment per series, each segment with its own title.

    ``format_value`` writes a segment's value in its title; ``format_tick`` an axis tick, given the step
    between ticks, so that every tick has the same decimals.
    """
    plot_width = _WIDTH - _LEFT - _RIGHT
    plot_height = _HEIGHT - _TOP - _BOTTOM
    totals = [sum(s.values[i] for s in series) for i in range(len(categories))]
    top = nice_ceiling(max(totals, default=0.0))
    ident = escape(chart_id)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(description)}</desc>',
    ]
    ticks = axis_ticks(top)
    for tick in ticks:
        y = _TOP + plot_height * (1 - tick / top)
        parts.append(
            f'<line class="chart-grid" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{_number(y)}" y2="{_number(y)}"/>'
            f'<text class="chart-tick" x="{_LEFT - 8}" y="{_number(y + 4)}" text-anchor="end">'
            f"{escape(format_tick(tick, ticks[1]))}</text>"
        )
    band = plot_width / max(len(categories), 1)
    bar = max(band * 0.7, 1.0)
    label_every = max(1, math.ceil(len(categories) / _MAX_X_LABELS))
    for i, category in enumerate(categories):
        x = _LEFT + band * i + (band - bar) / 2
        base = float(_TOP + plot_height)
        for layer in series:
            value = layer.values[i]
            if value <= 0:
                continue
            height = plot_height * value / top
            base -= height
            parts.append(
                f'<rect class="series-{layer.colour % SERIES_COLOURS}" x="{_number(x)}" y="{_number(base)}" '
                f'width="{_number(bar)}" height="{_number(height)}">'
                f"<title>{escape(layer.name)}, {escape(category)}: {escape(format_value(value))}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text class="chart-tick" x="{_number(x + bar / 2)}" y="{_TOP + plot_height + 16}" '
                f'text-anchor="middle">{escape(category)}</text>'
            )
    axis_y = _TOP + plot_height
    parts.append(f'<line class="chart-axis" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{axis_y}" y2="{axis_y}"/>')
    parts.append(
        f'<text class="chart-label" x="{_LEFT + plot_width / 2:.0f}" y="{_HEIGHT - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text class="chart-label" x="14" y="{_TOP + plot_height / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_height / 2:.0f})">{escape(y_label)}</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  # every text above went through escape()
