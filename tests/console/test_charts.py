"""The usage page's pure parts: number formats, the SVG bar chart and the figures from usage rows."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from registry.completions.schemas import UsageRow
from registry.console import formatting
from registry.console.charts import Series, axis_ticks, nice_ceiling, stacked_bars
from registry.console.usage import NO_PROMPT_LABEL, OTHER, usage_figures

CASES = json.loads((Path(__file__).parent / "cases" / "formatting.json").read_text())
SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(("name", "value", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_number_formats(name: str, value: Any, expected: str) -> None:
    assert getattr(formatting, name)(value) == expected


@pytest.mark.parametrize(
    ("value", "ceiling", "ticks"),
    [
        (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1]),
        (50, 50, [0, 10, 20, 30, 40, 50]),
        (70, 100, [0, 20, 40, 60, 80, 100]),
        (0.049, 0.05, [0, 0.01, 0.02, 0.03, 0.04, 0.05]),
        (130, 200, [0, 50, 100, 150, 200]),
    ],
    ids=["nothing", "exactly round", "up to the next power", "cents", "two hundred in fifties"],
)
def test_the_axis_ends_at_a_round_number_with_round_ticks(value: float, ceiling: float, ticks: list[float]) -> None:
    assert nice_ceiling(value) == pytest.approx(ceiling)
    assert axis_ticks(nice_ceiling(value)) == pytest.approx(ticks)


def chart(names: list[str], categories: list[str]) -> ET.Element:
    markup = stacked_bars(
        chart_id="c",
        title="Tokens <per> day",
        description="All of them & more",
        categories=categories,
        series=[Series(name, [1.0] * len(categories), i) for i, name in enumerate(names)],
        x_label="Day",
        y_label="Tokens",
        format_value=str,
        format_tick=formatting.count_tick,
    )
    return ET.fromstring(str(markup))


def test_the_chart_is_well_formed_svg_with_its_text_escaped() -> None:
    hostile = "<script>alert('x')</script>"
    svg = chart([hostile, 'b" onload="alert(1)'], ["12-01", "<b>"])
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "c-title c-desc"
    assert svg.find(f"{SVG}title").text == "Tokens <per> day"  # type: ignore[union-attr]
    assert svg.find(f"{SVG}desc").text == "All of them & more"  # type: ignore[union-attr]
    assert list(svg.iter(f"{SVG}script")) == []
    assert all(not name.startswith("on") for element in svg.iter() for name in element.attrib)
    segments = [rect.find(f"{SVG}title").text for rect in svg.iter(f"{SVG}rect")]  # type: ignore[union-attr]
    quoted = 'b" onload="alert(1)'
    assert segments == [f"{name}, {day}: 1.0" for day in ("12-01", "<b>") for name in (hostile, quoted)]
    labels = [text.text for text in svg.iter(f"{SVG}text")]
    assert {"Day", "Tokens", "12-01", "<b>"} <= set(labels)


def row(day: date | str, prompt: str, tokens: int, cost: float) -> UsageRow:
    return UsageRow(
        requests=1,
        errors=0,
        cached=0,
        fallbacks=0,
        input_tokens=tokens,
        output_tokens=0,
        cost=cost,
        mean_latency_ms=None,
        mean_ttft_ms=None,
        prompt=prompt,
        day=day,  # type: ignore[arg-type]  # SQLite reports the day as text
    )


def test_figures_add_up_to_the_rows_and_fold_small_groups_into_other() -> None:
    first, last = date(2026, 12, 1), date(2026, 12, 3)
    rows = [row(date(2026, 12, 1), f"p{i}", 100 - i, 0.5) for i in range(10)] + [row("2026-12-03", "p0", 5, 0.25)]
    figures = usage_figures(rows, by="prompt", first=first, last=last, labels={})
    assert (figures.requests, figures.tokens, figures.cost) == (11, sum(100 - i for i in range(10)) + 5, 5.25)
    assert [g.label for g in figures.groups] == ["p0", "p1", "p2", "p3", "p4", "p5", "p6", OTHER]
    assert figures.groups[-1].tokens == 93 + 92 + 91
    assert [(d.day, d.tokens) for d in figures.days] == [(first, 955), (date(2026, 12, 2), 0), (last, 5)]
    assert sum(g.token_share for g in figures.groups) == pytest.approx(1)


def test_completions_without_a_prompt_are_named_as_such() -> None:
    day = date(2026, 12, 1)
    figures = usage_figures(
        [row(day, "", 10, 0.5), row(day, "p0", 5, 0.25)], by="prompt", first=day, last=day, labels={}
    )
    assert [g.label for g in figures.groups] == [NO_PROMPT_LABEL, "p0"]
