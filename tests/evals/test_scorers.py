"""Scorers: each kind scores outputs as its cases say, bad specs are refused naming the scorer and field,
and the pass rule combines one item's scores into its verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.evals.scorers import (
    MAX_SCORERS,
    Contains,
    Judge,
    PassRule,
    Score,
    ScoreInput,
    ScorerInvalidError,
    Verdict,
    combine,
    judge_score,
    parse_pass_rule,
    parse_scorers,
    score,
)

CASES = Path(__file__).parent / "cases"
SCORING = json.loads((CASES / "scorers.json").read_text())["cases"]
INVALID = json.loads((CASES / "invalid_scorers.json").read_text())["cases"]


def parse_one(raw: dict[str, Any]) -> Any:
    (spec,) = parse_scorers([raw])
    return spec


@pytest.mark.parametrize(
    ("spec", "completion", "value", "passed", "reason"), [c[1:] for c in SCORING], ids=[c[0] for c in SCORING]
)
def test_a_scorer_scores_the_output(
    spec: dict[str, Any], completion: dict[str, Any], value: float, passed: bool, reason: str
) -> None:
    result = score(parse_one(spec), ScoreInput(**completion))
    assert (result.passed, result.reason) == (passed, reason)
    assert result.value == pytest.approx(value)


@pytest.mark.parametrize(("raw", "detail"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_an_invalid_scorer_is_refused_naming_its_index_and_field(raw: Any, detail: str) -> None:
    with pytest.raises(ScorerInvalidError) as caught:
        parse_scorers(raw)
    error = caught.value
    assert error.detail == detail
    assert (error.status_code, error.type) == (422, "scorer_invalid")
    assert "; ".join(f"{e.field}: {e.message}" for e in error.errors) == detail


def test_more_scorers_than_the_limit_are_refused() -> None:
    with pytest.raises(ScorerInvalidError, match=f"has {MAX_SCORERS + 1} scorers, over the limit of {MAX_SCORERS}"):
        parse_scorers([{"kind": "valid_json"}] * (MAX_SCORERS + 1))


def test_an_overlong_pattern_is_refused() -> None:
    with pytest.raises(ScorerInvalidError, match=r"scorers\[0\]\.pattern: is 1001 characters, over the limit of 1000"):
        parse_scorers([{"kind": "regex", "pattern": "a" * 1001}])


def test_a_parsed_scorer_has_its_defaults_filled_in() -> None:
    (spec,) = parse_scorers([{"kind": "contains", "value": "refund", "weight": 2}])
    assert spec == Contains(weight=2.0, name="contains", values=("refund",), mode="all", case_sensitive=True)
    assert spec.as_dict() == {
        "kind": "contains",
        "weight": 2.0,
        "name": "contains",
        "values": ["refund"],
        "mode": "all",
        "case_sensitive": True,
    }


def test_a_stored_scorer_reads_back_the_same() -> None:
    raws = [c[1] for c in SCORING] + [
        {"kind": "judge", "prompt": "grader", "label": "production", "config": "gpt", "config_version": 2},
        {"kind": "judge", "prompt": "grader", "version": 3, "min_score": 0.8, "name": "tone", "weight": 0.5},
    ]
    specs = [parse_one(raw) for raw in raws]
    stored = json.loads(json.dumps([spec.as_dict() for spec in specs]))
    assert [parse_one(raw) for raw in stored] == specs


def test_a_judge_spec_keeps_what_picks_the_judge() -> None:
    spec = parse_one({"kind": "judge", "prompt": "grader", "label": "staging", "config": "small", "min_score": 0.7})
    assert spec == Judge(name="judge", prompt="grader", label="staging", config="small", min_score=0.7)


def test_a_judge_score_passes_from_its_minimum() -> None:
    spec = Judge(prompt="grader", min_score=0.7)
    assert judge_score(spec, 0.7, "polite and correct") == Score(0.7, True, "polite and correct")
    assert judge_score(spec, 0.69, "a little curt") == Score(0.69, False, "a little curt")


def test_a_judge_score_outside_the_unit_interval_fails() -> None:
    assert judge_score(Judge(prompt="grader"), 7, "great") == Score(
        0.0, False, "the judge's score 7 is outside [0, 1]: great"
    )


def test_a_judge_is_not_scored_without_its_completion() -> None:
    with pytest.raises(TypeError, match="judge_score"):
        score(Judge(prompt="grader"), ScoreInput(output="hi"))


def test_a_failed_completion_fails_the_judge_without_asking_it() -> None:
    failed = ScoreInput(output="", error="backend unavailable")
    assert score(Judge(prompt="grader"), failed) == Score(0.0, False, "the completion failed: backend unavailable")


# --------------------------------------------------------------------------- pass rule

THREE = parse_scorers(
    [{"kind": "valid_json", "weight": 2}, {"kind": "contains", "value": "a"}, {"kind": "length", "max": 9}]
)
PASS, FAIL, HALF = Score(1.0, True, ""), Score(0.0, False, ""), Score(0.5, False, "")


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (None, PassRule()),
        ({"all": True}, PassRule()),
        ({"min_score": 0.8}, PassRule(min_score=0.8)),
        ({"min_score": 1}, PassRule(min_score=1.0)),
        ({"min_passed": 3}, PassRule(min_passed=3)),
    ],
    ids=["none is all", "all", "min score", "min score one", "min passed"],
)
def test_a_pass_rule_is_read(raw: Any, rule: PassRule) -> None:
    assert parse_pass_rule(raw, THREE) == rule
    assert parse_pass_rule(rule.as_dict(), THREE) == rule


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        ({"all": False}, "pass_rule.all: must be true"),
        ({"min_score": 1.5}, "pass_rule.min_score: must be within [0, 1], not 1.5"),
        ({"min_score": "high"}, "pass_rule.min_score: must be a number"),
        ({"min_passed": 4}, "pass_rule.min_passed: is 4, more than the 3 scorers"),
        ({"min_passed": 0}, "pass_rule.min_passed: must be an integer of at least 1, not 0"),
        ({"majority": True}, "pass_rule.majority: is not a pass rule; use all, min_score or min_passed"),
        (
            {"all": True, "min_score": 0.5},
            'pass_rule: must be one of {"all": true}, {"min_score": X}, {"min_passed": K}',
        ),
        ([], 'pass_rule: must be one of {"all": true}, {"min_score": X}, {"min_passed": K}'),
    ],
    ids=[
        "all false",
        "min score over 1",
        "min score text",
        "more than the scorers",
        "none passed",
        "unknown",
        "two",
        "list",
    ],
)
def test_an_invalid_pass_rule_is_refused(raw: Any, detail: str) -> None:
    with pytest.raises(ScorerInvalidError) as caught:
        parse_pass_rule(raw, THREE)
    assert caught.value.detail == detail


def test_the_item_score_is_the_weighted_mean() -> None:
    verdict = combine(THREE, [PASS, HALF, FAIL], PassRule())
    assert verdict.score == pytest.approx((2 * 1.0 + 0.5 + 0.0) / 4)
    assert (verdict.passed, verdict.failed) == (False, (1, 2))


def test_every_scorer_must_pass_by_default() -> None:
    assert combine(THREE, [PASS, PASS, PASS], PassRule()).passed
    assert not combine(THREE, [PASS, PASS, FAIL], PassRule()).passed


def test_a_minimum_score_passes_on_the_weighted_mean() -> None:
    assert combine(THREE, [PASS, PASS, FAIL], PassRule(min_score=0.75)).passed
    assert not combine(THREE, [PASS, FAIL, PASS], PassRule(min_score=0.8)).passed


def test_a_minimum_of_scorers_passed() -> None:
    assert combine(THREE, [FAIL, PASS, PASS], PassRule(min_passed=2)) == Verdict(0.5, True, (0,))
    assert not combine(THREE, [FAIL, HALF, PASS], PassRule(min_passed=2)).passed


def test_combining_needs_a_score_per_scorer() -> None:
    with pytest.raises(ValueError, match="2 scores for 3 scorers"):
        combine(THREE, [PASS, PASS], PassRule())
