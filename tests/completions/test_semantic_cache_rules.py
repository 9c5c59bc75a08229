"""The semantic cache's pure rules (registry.completions.similarity), from JSON cases: ``[description, *inputs,
expected]`` in tests/completions/cases/semantic_*.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.completions.similarity import (
    best_match,
    choose_threshold,
    pack,
    rates,
    request_text,
    scope_key,
    similarity,
    unpack,
)

CASES = Path(__file__).parent / "cases"
BASE: dict[str, Any] = {
    "prompt": "support",
    "version": 1,
    "config": "cfg",
    "config_version": 3,
    "model": "all-MiniLM-L6-v2",
    "exact": {"lang": "en"},
    "payload": {
        "messages": [{"role": "user", "content": "How do I reset my password?"}],
        "max_tokens": 8,
        "temperature": 0,
    },
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        name = metafunc.function.__name__.removeprefix("test_").split("_from_cases")[0]
        cases = json.loads((CASES / f"{name}.json").read_text())
        metafunc.parametrize("case", [c[1:] for c in cases], ids=[c[0] for c in cases])


def test_semantic_request_text_from_cases(case: list[Any]) -> None:
    payload, expected = case
    assert request_text(payload) == expected


def test_semantic_scope_from_cases(case: list[Any]) -> None:
    """Two requests share a scope (and so may answer each other) only when all but their text is equal."""
    first, second, same = case
    one = {**BASE, **first}
    other = {**BASE, **second}
    if "payload" in second:
        other["payload"] = {"max_tokens": 8, "temperature": 0, **second["payload"]}
    assert (scope_key(**one) == scope_key(**other)) is same


def test_semantic_best_match_from_cases(case: list[Any]) -> None:
    query, candidates, threshold, expected = case
    found = best_match(pack(query), [(name, pack(vector)) for name, vector in candidates], threshold)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert found[0] == expected[0]
        assert found[1] == pytest.approx(expected[1])


def test_semantic_threshold_from_cases(case: list[Any]) -> None:
    positives, negatives, target, expected, expected_rates = case
    chosen = choose_threshold(positives, negatives, max_wrong_hit_rate=target)
    assert chosen == pytest.approx(expected)
    assert rates(positives, negatives, chosen) == pytest.approx(tuple(expected_rates))


def test_a_packed_vector_is_float32_of_unit_length() -> None:
    packed = pack([3.0, 4.0])

    assert len(packed) == 8
    assert list(unpack(packed)) == pytest.approx([0.6, 0.8])
    assert similarity(unpack(packed), unpack(pack([6.0, 8.0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("vector", [[], [0.0, 0.0], [float("nan"), 1.0]], ids=["empty", "zero", "nan"])
def test_a_vector_that_cannot_be_normalised_is_refused(vector: list[float]) -> None:
    with pytest.raises(ValueError, match="embedding"):
        pack(vector)
