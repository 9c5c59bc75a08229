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


def span_ticks(low: float, high: float) -> list[float]:
    """Round ticks covering ``low`` to ``high``, 1, 2 or 5 times a power of ten apart (zero among them if spanned)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("ticks of an infinite span")
    if high - low <= 0:
        low, high = low - 1, high + 1
    step = nice_ceiling((high - low) / 5)
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def _frame(chart_id: str, title: str, description: str, height: int, width: int = _WIDTH) -> list[str]:
    ident = escape(chart_id)
    return [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{ident}-title">{escape(title)}</title>',
        f'<desc id="{ident}-desc">{escape(description)}</desc>',
    ]


def _x_label(text: str, left: float, width: float, height: int) -> str:
    return (
        f'<text class="chart-label" x="{left + width / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        f"{escape(text)}</text>"
    )


@dataclass(frozen=True, slots=True)
class IntervalRow:
    """One variant's effect: its estimate and interval, drawn as a dot on a line."""

    label: str
    estimate: float
    low: float
    high: float
    colour: int
    text: str  # the row's own text alternative: "treatment: +3.10% (-1.20% to +7.40%)"


_ROW_HEIGHT = 40
_LABELS_WIDTH = 150


def interval_plot(
    *,
    chart_id: str,
    title: str,
    description: str,
    rows: Sequence[IntervalRow],
    x_label: str,
    format_tick: Callable[[float, float], str],
    width: int = 1160,
    reference: tuple[float, str] | None = None,
) -> Markup:
    """Estimates with their intervals, one row each, against a line at zero (no effect).

    A row whose interval is not finite is left out of the scale and drawn as its label and text only.
    ``width`` is that of a full-width card, so its text shows at the page's size. ``reference`` is a
    second, solid line at its value, its label as its title (a rollout's tolerated degradation).
    """
    top, bottom = 10, 46
    height = top + _ROW_HEIGHT * max(len(rows), 1) + bottom
    left, right = _LABELS_WIDTH, width - _RIGHT - 8
    drawable = [r for r in rows if all(math.isfinite(v) for v in (r.estimate, r.low, r.high))]
    marks = [0.0] if reference is None else [0.0, reference[0]]
    ticks = span_ticks(min([*marks, *(r.low for r in drawable)]), max([*marks, *(r.high for r in drawable)]))
    low, high = ticks[0], ticks[-1]

    def x(value: float) -> float:
        return left + (right - left) * (value - low) / (high - low)

    parts = _frame(chart_id, title, description, height, width)
    axis_y = top + _ROW_HEIGHT * max(len(rows), 1)
    for tick in ticks:
        parts.append(
            f'<line class="chart-grid" x1="{_number(x(tick))}" x2="{_number(x(tick))}" y1="{top}" y2="{axis_y}"/>'
            f'<text class="chart-tick" x="{_number(x(tick))}" y="{axis_y + 16}" text-anchor="middle">'
            f"{escape(format_tick(tick, ticks[1] - ticks[0]))}</text>"
        )
    parts.append(f'<line class="chart-zero" x1="{_number(x(0))}" x2="{_number(x(0))}" y1="{top}" y2="{axis_y}"/>')
    if reference is not None:
        at, label = _number(x(reference[0])), escape(reference[1])
        parts.append(
            f'<g class="chart-reference"><title>{label}</title><line x1="{at}" x2="{at}" y1="{top}" y2="{axis_y}"/></g>'
        )
    for i, row in enumerate(rows):
        y = top + _ROW_HEIGHT * i + _ROW_HEIGHT / 2
        parts.append(
            f'<g class="chart-row"><title>{escape(row.text)}</title>'
            f'<text class="chart-tick chart-row-label" x="{left - 12}" y="{_number(y + 4)}" text-anchor="end">'
            f"{escape(row.label)}</text>"
        )
        if row in drawable:
            colour = row.colour % SERIES_COLOURS
            parts.append(
                f'<line class="chart-interval stroke-{colour}" x1="{_number(x(row.low))}" x2="{_number(x(row.high))}" '
                f'y1="{_number(y)}" y2="{_number(y)}"/>'
                f'<circle class="series-{colour}" cx="{_number(x(row.estimate))}" cy="{_number(y)}" r="5"/>'
            )
        parts.append("</g>")
    parts.append(f'<line class="chart-axis" x1="{left}" x2="{right}" y1="{axis_y}" y2="{axis_y}"/>')
    parts.append(_x_label(x_label, left, right - left, height))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  # every text above went through escape()


@dataclass(frozen=True, slots=True)
class LineSeries:
    """One line: a value per category (None where there is none), in the categories' order."""

    name: str
    values: Sequence[float | None]
    colour: int


def line_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    categories: Sequence[str],
    series: Sequence[LineSeries],
    x_label: str,
    y_label: str,
    format_value: Callable[[float], str],
    format_tick: Callable[[float, float], str],
    width: int = 560,
) -> Markup:
    """Lines over categories (times), each point a dot with its own title; gaps where a value is None.

    ``width`` is that of a half-width card, so its text shows at about the page's size.
    """
    plot_width = width - _LEFT - _RIGHT
    plot_height = _HEIGHT - _TOP - _BOTTOM
    values = [v for s in series for v in s.values if v is not None and math.isfinite(v)]
    ticks = axis_ticks(nice_ceiling(max(values, default=0.0))) if min(values, default=0.0) >= 0 else None
    if ticks is None:
        ticks = span_ticks(min(values), max(values))
    low, high = ticks[0], ticks[-1]
    step = plot_width / max(len(categories), 1)

    def x(i: int) -> float:
        return _LEFT + step * i + step / 2

    def y(value: float) -> float:
        return _TOP + plot_height * (1 - (value - low) / (high - low))

    parts = _frame(chart_id, title, description, _HEIGHT, width)
    for tick in ticks:
        level = _number(y(tick))
        parts.append(
            f'<line class="chart-grid" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{level}" y2="{level}"/>'
            f'<text class="chart-tick" x="{_LEFT - 8}" y="{_number(y(tick) + 4)}" text-anchor="end">'
            f"{escape(format_tick(tick, ticks[1] - ticks[0]))}</text>"
        )
    label_every = max(1, math.ceil(len(categories) / _MAX_X_LABELS))
    for i, category in enumerate(categories):
        if i % label_every == 0:
            parts.append(
                f'<text class="chart-tick" x="{_number(x(i))}" y="{_TOP + plot_height + 16}" text-anchor="middle">'
                f"{escape(category)}</text>"
            )
    for line in series:
        colour = line.colour % SERIES_COLOURS
        path, pen_down = [], False
        for i, value in enumerate(line.values):
            if value is None or not math.isfinite(value):
                pen_down = False
                continue
            path.append(f"{'L' if pen_down else 'M'}{_number(x(i))} {_number(y(value))}")
            pen_down = True
        if path:
            parts.append(f'<path class="chart-line stroke-{colour}" d="{" ".join(path)}"/>')
        for i, value in enumerate(line.values):
            if value is not None and math.isfinite(value):
                parts.append(
                    f'<circle class="series-{colour}" cx="{_number(x(i))}" cy="{_number(y(value))}" r="3">'
                    f"<title>{escape(line.name)}, {escape(categories[i])}: {escape(format_value(value))}</title>"
                    "</circle>"
                )
    axis_y = _TOP + plot_height
    parts.append(f'<line class="chart-axis" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{axis_y}" y2="{axis_y}"/>')
    parts.append(_x_label(x_label, _LEFT, plot_width, _HEIGHT))
    parts.append(
        f'<text class="chart-label" x="14" y="{_TOP + plot_height / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_height / 2:.0f})">{escape(y_label)}</text>'
    )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  # every text above went through escape()
