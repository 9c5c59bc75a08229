"""The json_schema scorer holds a hostile schema to the item it scores: its patterns have a time limit, as the
regex scorer's, and a ``$ref`` that cannot be applied fails the item instead of raising (which failed the run)."""

from __future__ import annotations

import pytest

from registry.evals.runner import parse_judgement
from registry.evals.scorers import ScoreInput, ScorerInvalidError, parse_scorers, score
from registry.guards.classifier import parse_verdict


def _scored(schema: dict[str, object], output: str) -> tuple[bool, str]:
    (spec,) = parse_scorers([{"kind": "json_schema", "schema": schema}])
    result = score(spec, ScoreInput(output=output))
    return result.passed, result.reason


def test_a_schemas_backtracking_pattern_fails_the_item_within_the_time_limit() -> None:
    backtracking = "(a|aa)+$"
    text = "a" * 34 + "b"  # Python's re takes seconds on this, and twice as long with each two more a's
    passed, reason = _scored({"type": "string", "pattern": backtracking}, f'"{text}"')
    assert not passed
    assert "took over" in reason, reason
    keyed = {"type": "object", "patternProperties": {backtracking: {}}, "additionalProperties": False}
    passed, reason = _scored(keyed, f'{{"{text}": 1}}')
    assert not passed
    assert "took over" in reason, reason
    # Patterns that match quickly keep their meaning (a search, as JSON Schema's).
    assert _scored({"type": "string", "pattern": "^a"}, '"abc"') == (True, "valid against the schema")
    assert _scored(keyed, '{"aaa": 1}')[0]
    assert not _scored(keyed, '{"y": 1}')[0]


def test_a_ref_that_cannot_be_applied_fails_the_item_with_a_reason() -> None:
    passed, reason = _scored({"$ref": "#"}, "{}")
    assert not passed
    assert "refers to itself without end" in reason
    passed, reason = _scored({"$ref": "#/definitions/missing"}, "{}")
    assert not passed
    assert "cannot be resolved" in reason
    with pytest.raises(ScorerInvalidError):
        parse_scorers(
            [{"kind": "json_schema", "schema": {"patternProperties": {"a": {}}, "unevaluatedProperties": False}}]
        )


def test_what_nests_too_deep_fails_the_item_or_is_refused_instead_of_raising() -> None:
    deep = "[" * 100_000 + "]" * 100_000  # a model's output: json.loads raised RecursionError, failing the run
    for kind in ("valid_json", "json_schema"):
        (spec,) = parse_scorers([{"kind": kind, "schema": {}}] if kind == "json_schema" else [{"kind": kind}])
        result = score(spec, ScoreInput(output=deep))
        assert not result.passed
        assert "nested too deep" in result.reason
    assert parse_judgement(deep) is None  # a judge's answer as deep: not a score, the item fails
    assert parse_verdict(deep) is None  # a model guard's classifier's: not a verdict (it raised, a 500)
    schema: dict[str, object] = {}
    inner = schema
    for _ in range(300):
        inner["items"] = {}
        inner = inner["items"]  # type: ignore[assignment]
    with pytest.raises(ScorerInvalidError) as refused:
        parse_scorers([{"kind": "json_schema", "schema": schema}])
    assert "nests too deep" in str(refused.value.detail)
