"""The evaluation pages' pure parts: the start form read into the API's request, per-scorer pass rates, list rows."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from registry.console.evals import RunForm, RunFormError, listed, run_request, scorer_rates
from registry.evals.models import EvalRun
from registry.evals.statistics import summarize


def item(*scores: tuple[str, bool]) -> list[dict[str, Any]]:
    return [{"name": name, "kind": "contains", "value": float(ok), "passed": ok, "reason": ""} for name, ok in scores]


def test_scorer_rates_count_each_scorers_passes_in_the_runs_order() -> None:
    scorers = [{"kind": "exact_match"}, {"kind": "contains", "name": "mentions"}]
    items = [item(("exact_match", True), ("mentions", False)), item(("exact_match", False), ("mentions", False))]
    rates = scorer_rates(scorers, items)
    assert [(r.name, r.kind, r.passed, r.scored, r.rate) for r in rates] == [
        ("exact_match", "exact_match", 1, 2, 0.5),
        ("mentions", "contains", 0, 2, 0.0),
    ]


def test_a_scorer_with_no_items_done_has_no_rate() -> None:
    assert [r.rate for r in scorer_rates([{"kind": "valid_json"}], [])] == [None]


def test_the_form_becomes_the_apis_request_with_common_scorers_first() -> None:
    form = RunForm(
        prompt="support/answer",
        version="3",
        dataset="golden",
        dataset_version="",
        common=["exact_match_ci"],
        scorers_json='{"kind": "contains", "values": ["refund"]}',
        rule="min_score",
        pass_value="0.75",
        concurrency="8",
    )
    request = run_request(form)
    assert (request.prompt, request.version, request.config_version, request.concurrency) == (
        "support/answer",
        3,
        None,
        8,
    )
    assert (request.dataset.name, request.dataset.version) == ("golden", None)
    assert request.scorers == [
        {"kind": "exact_match", "name": "exact_match_ci", "case_sensitive": False},
        {"kind": "contains", "values": ["refund"]},
    ]
    assert request.pass_rule == {"min_score": 0.75}


@pytest.mark.parametrize(
    ("config", "config_version", "expected"),
    [
        ("", "", (None, None, None, None)),
        ("", "2", (None, None, None, 2)),
        ("fast", "", ("fast", None, None, None)),
        ("fast", "3", ("fast", 3, None, None)),
        ("fast", "staging", ("fast", None, "staging", None)),
    ],
    ids=["own-config", "own-config-version", "any-config-production", "any-config-version", "any-config-label"],
)
def test_the_forms_config_becomes_the_apis_config_or_config_version(
    config: str, config_version: str, expected: tuple[Any, ...]
) -> None:
    form = RunForm(prompt="p", version="1", dataset="d", config=config, config_version=config_version)
    request = run_request(form)
    chosen = request.config
    found = (None, None, None) if chosen is None else (chosen.name, chosen.version, chosen.label)
    assert (*found, request.config_version) == expected


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"scorers_json": "[{"}, "More scorers is not JSON"),
        ({"common": []}, "Choose at least one scorer"),
        ({"version": "two"}, "Prompt version must be a whole number"),
        ({"version": ""}, "Prompt version is required"),
        ({"rule": "min_score", "pass_value": "most"}, "Minimum score must be a number"),
        ({"concurrency": "100"}, "The form is not a run"),
        ({"config_version": "staging"}, "Config version must be a whole number"),
        ({"config": "fast", "config_version": "someday"}, "a number or a label"),
    ],
    ids=[
        "bad-json",
        "no-scorer",
        "version-not-a-number",
        "no-version",
        "min-score-not-a-number",
        "concurrency-over-64",
        "label-without-config",
        "config-version-neither-number-nor-label",
    ],
)
def test_a_form_the_api_would_refuse_says_why(changes: dict[str, Any], problem: str) -> None:
    form = RunForm(**{"prompt": "p", "version": "1", "dataset": "d", **changes})
    with pytest.raises(RunFormError, match=problem):
        run_request(form)


def test_a_listed_runs_interval_is_the_one_its_results_give() -> None:
    fields = {
        "id": 1, "status": "completed", "prompt": "p", "prompt_version": 1, "config": "c", "config_version": 1,
        "dataset": "d", "dataset_version": 1, "scorers": [], "pass_rule": None, "concurrency": 4, "total_items": 7,
        "items_done": 7, "items_passed": 5, "items_invalid": 0, "items_errored": 0, "cost": 0.0, "input_tokens": 0,
        "output_tokens": 0, "created_by": "a", "created_at": None, "started_at": None, "finished_at": None,
        "error": None, "items_scorer_errors": 0,
    }  # fmt: skip
    row = listed(cast(EvalRun, SimpleNamespace(**fields)))
    summary = summarize([True] * 5 + [False] * 2, [1.0] * 5 + [0.0] * 2)
    assert row.pass_rate_interval is not None
    assert (row.pass_rate_interval.estimate, row.pass_rate_interval.low, row.pass_rate_interval.high) == (
        summary.pass_rate,
        *(summary.pass_rate_ci or (None, None)),
    )
