"""The results page's plots (pure): the effect with its interval, and units and the metric over time."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import msgspec
import pytest

from registry.console.charts import IntervalRow, LineSeries, interval_plot, line_chart, span_ticks
from registry.console.experiments import ShownEffect
from registry.experiments.schemas import ComparisonOut, EffectOut, SequentialOut

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('v')</script>"


@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (-0.9, 0.4, [-1.0, -0.5, 0.0, 0.5]),
        (0.0, 0.0, [-1.0, -0.5, 0.0, 0.5, 1.0]),
        (2.0, 9.0, [2.0, 4.0, 6.0, 8.0, 10.0]),
    ],
    ids=["across zero", "nothing to span", "above zero"],
)
def test_span_ticks_are_round_and_cover_the_span(low: float, high: float, ticks: list[float]) -> None:
    assert span_ticks(low, high) == pytest.approx(ticks)


def test_the_interval_plot_has_a_title_a_description_and_a_text_per_row_all_escaped() -> None:
    rows = [
        IntervalRow(HOSTILE, 0.1, -0.05, 0.25, 1, f"{HOSTILE}: +10.00% (-5.00% to +25.00%)"),
        IntervalRow("wide", 1.0, float("-inf"), float("inf"), 2, "wide: not enough data"),
    ]
    markup = str(
        interval_plot(
            chart_id="e",
            title="Effect",
            description="Against control",
            rows=rows,
            x_label="Relative difference",
            format_tick=lambda v, _: f"{v:.0%}",
        )
    )
    svg = ET.fromstring(markup)
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "e-title e-desc"
    assert [t.text for t in svg.iter(f"{SVG}title")] == ["Effect", rows[0].text, rows[1].text]
    assert len(svg.findall(f".//{SVG}circle")) == 1  # the unbounded row is named, not drawn
    assert "<script>" not in markup


def test_the_line_chart_breaks_where_a_value_is_missing_and_titles_every_point() -> None:
    markup = str(
        line_chart(
            chart_id="t",
            title="Mean over time",
            description="d",
            categories=["a", "b", "c"],
            series=[LineSeries("control", [0.5, None, 0.25], 0)],
            x_label="x",
            y_label="y",
            format_value=lambda v: f"{v:.2f}",
            format_tick=lambda v, _: f"{v:.1f}",
        )
    )
    svg = ET.fromstring(markup)
    (path,) = svg.findall(f".//{SVG}path")
    assert path.get("d", "").count("M") == 2  # two pieces, no line across the gap
    assert [c.find(f"{SVG}title").text for c in svg.findall(f".//{SVG}circle")] == [
        "control, a: 0.50",
        "control, c: 0.25",
    ]  # type: ignore[union-attr]


def effect(estimate: float) -> EffectOut:
    return EffectOut(estimate=estimate, std_error=0.1, ci_low=estimate - 0.2, ci_high=estimate + 0.2, p_value=0.5)


def test_the_plot_shows_the_sequential_interval_when_the_experiment_is_sequential() -> None:
    comparison = ComparisonOut(
        absolute=effect(0.01),
        relative=effect(0.1),
        p_value=0.5,
        p_value_adjusted=0.5,
        significant=False,
        chance_to_beat_control=0.6,
        credible_interval=None,
        dof=10.0,
        sequential=SequentialOut(absolute=effect(0.01), relative=effect(0.3)),
        cuped_theta=None,
    )
    shown = ShownEffect.of(comparison)
    assert (shown.relative, shown.effect.estimate) == (True, 0.3)
    assert shown.interval == "+10.00% to +50.00%"
    without = ShownEffect.of(msgspec.structs.replace(comparison, sequential=None))
    assert (without.relative, without.effect.estimate) == (True, 0.1)
