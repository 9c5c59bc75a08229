"""The results of a phase from its sums alone (pure): corrections across metrics and variants, notes, SRM."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from registry.experiments.aggregation import Sums
from registry.experiments.results import Analysis, MetricDefinition, PhaseData, build_results
from registry.stats import holm, srm_p_value

METRICS = [
    MetricDefinition(1, "converted", "primary", "binomial", "any", "higher"),
    MetricDefinition(2, "latency", "guardrail", "continuous", "mean", "lower"),
]


def phase(**changes: object) -> PhaseData:
    data = {
        "experiment": "exp",
        "phase": 1,
        "status": "running",
        "variants": ["control", "b", "c"],
        "weights": [0.5, 0.25, 0.25],
        "units": {"control": 1000, "b": 510, "c": 480},
        "units_in_multiple_variants": 4,
        "pending_units": 0,
        "metrics": METRICS,
        "sums": {
            ("control", 1): Sums(100, 100.0, 100.0),
            ("b", 1): Sums(70, 70.0, 70.0),
            ("c", 1): Sums(50, 50.0, 50.0),
            ("control", 2): Sums(800, 160_000.0, 33_000_000.0),
            ("b", 2): Sums(400, 76_000.0, 15_000_000.0),
            ("c", 2): Sums(1, 150.0, 22_500.0),
        },
    }
    data.update(changes)
    return PhaseData(**data)  # type: ignore[arg-type]


ANALYSIS = Analysis(alpha=0.05, correction="holm", sequential=False, sequential_tuning=5000.0, cuped=False)


def test_conversion_counts_every_unit_and_mean_only_units_with_data() -> None:
    results = build_results(phase(), ANALYSIS, datetime.now(UTC))
    converted, latency = results.metrics
    assert [v.units for v in converted.variants] == [1000, 510, 480]
    assert converted.variants[1].mean == pytest.approx(70 / 510)
    assert [v.units for v in latency.variants] == [800, 400, 1]


def test_p_values_are_adjusted_across_metrics_and_variants() -> None:
    results = build_results(phase(), ANALYSIS, datetime.now(UTC))
    compared = [v.vs_control for m in results.metrics for v in m.variants if v.vs_control is not None]
    assert len(compared) == 3  # c's latency has a single unit: no comparison
    assert holm([c.p_value for c in compared]) == pytest.approx([c.p_value_adjusted for c in compared])
    note = results.metrics[1].variants[2].note
    assert note == "each variant needs at least 2 units with data"
    assert all(c.significant == (c.p_value_adjusted < 0.05) for c in compared)


def test_lower_is_better_metrics_flip_the_chance_to_win() -> None:
    latency = build_results(phase(), ANALYSIS, datetime.now(UTC)).metrics[1].variants[1].vs_control
    assert latency is not None
    assert latency.absolute.estimate < 0  # b is faster
    assert latency.chance_to_beat_control > 0.5


def test_the_sample_ratio_is_checked_against_the_weights() -> None:
    results = build_results(phase(), ANALYSIS, datetime.now(UTC))
    assert results.units == 1990
    assert results.units_in_multiple_variants == 4
    assert results.srm.p_value == pytest.approx(srm_p_value([1000, 510, 480], [0.5, 0.25, 0.25]))
    assert results.srm.flagged is False
    skewed = build_results(phase(units={"control": 1200, "b": 400, "c": 400}), ANALYSIS, datetime.now(UTC))
    assert skewed.srm.flagged is True
    assert [v.expected_share for v in skewed.variants] == [0.5, 0.25, 0.25]


def test_sequential_testing_decides_with_the_sequential_p_value() -> None:
    sequential = Analysis(alpha=0.05, correction="none", sequential=True, sequential_tuning=5000.0, cuped=False)
    comparison = build_results(phase(), sequential, datetime.now(UTC)).metrics[0].variants[1].vs_control
    assert comparison is not None
    assert comparison.sequential is not None
    assert comparison.p_value_adjusted == comparison.sequential.absolute.p_value
    assert comparison.p_value_adjusted >= comparison.p_value
