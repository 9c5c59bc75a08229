"""Assignment reproduces GrowthBook's SDKs: their own test cases, read from a JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prompt_registry_client.assignment import (
    assign_variation,
    choose_variation,
    fnv1a32,
    gb_hash,
    get_bucket_ranges,
    get_equal_weights,
    in_namespace,
)

CASES: dict[str, Any] = json.loads((Path(__file__).parent / "cases" / "growthbook.json").read_text())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    section = getattr(metafunc.function, "cases", None)
    if section is None:
        return
    cases = CASES[section]
    metafunc.parametrize("case", cases, ids=[c[0] for c in cases])


def cases(section: str) -> Any:
    def mark(test: Any) -> Any:
        test.cases = section
        return test

    return mark


@cases("hash")
def test_hash(case: list[Any]) -> None:
    _, seed, value, version, expected = case
    assert gb_hash(seed, value, version) == expected


@cases("fnv1a32")
def test_fnv1a32_over_utf16_code_units(case: list[Any]) -> None:
    _, value, expected = case
    assert fnv1a32(value) == expected


@cases("getBucketRange")
def test_bucket_ranges(case: list[Any]) -> None:
    _, count, coverage, weights, expected = case
    ranges = get_bucket_ranges(count, coverage, weights)
    assert [list(r) for r in ranges] == [pytest.approx(r, abs=1e-9) for r in expected]


@cases("chooseVariation")
def test_choose_variation(case: list[Any]) -> None:
    _, bucket, ranges, expected = case
    assert choose_variation(bucket, [tuple(r) for r in ranges]) == expected


@cases("inNamespace")
def test_in_namespace(case: list[Any]) -> None:
    _, unit, namespace, expected = case
    assert in_namespace(unit, tuple(namespace)) is expected


@cases("getEqualWeights")
def test_equal_weights(case: list[Any]) -> None:
    _, count, expected = case
    assert get_equal_weights(count) == pytest.approx(expected, abs=1e-8)


@cases("assign")
def test_assignment_matches_growthbook_run(case: list[Any]) -> None:
    _, unit, experiment, variation, in_experiment, hash_used = case
    namespace = experiment.get("namespace")
    result = assign_variation(
        unit,
        key=experiment["key"],
        variations=experiment["variations"],
        seed=experiment.get("seed"),
        hash_version=experiment["hashVersion"],
        coverage=experiment.get("coverage", 1.0),
        weights=experiment.get("weights"),
        namespace=tuple(namespace) if namespace else None,
        forced=experiment.get("forced"),
    )
    assert (result.variation, result.in_experiment, result.hash_used) == (variation, in_experiment, hash_used)


def test_raising_coverage_never_moves_an_included_unit() -> None:
    units = [f"user-{i}" for i in range(5000)]
    weights = [0.2, 0.3, 0.5]
    before = {u: assign_variation(u, key="exp", variations=3, coverage=0.3, weights=weights) for u in units}
    after = {u: assign_variation(u, key="exp", variations=3, coverage=0.8, weights=weights) for u in units}
    included = [u for u in units if before[u].in_experiment]
    assert included
    assert all(after[u].variation == before[u].variation for u in included)
    assert sum(a.in_experiment for a in after.values()) > len(included)
