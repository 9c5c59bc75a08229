"""Variant assignment, identical to GrowthBook's SDKs, as pure functions.

The service assigns units with these functions, and apps may call them
locally with an experiment's ``assignment`` block (``GET /v1/experiments/{key}``):
both give the same variant, and so does any GrowthBook SDK given the same key,
seed, hash version, weights, coverage and namespace.

The algorithm follows GrowthBook's JavaScript SDK (``packages/sdk-js/src/util.ts``
and ``runExperiment`` in ``core.ts``):

- FNV-1a 32-bit over the string's UTF-16 code units, as JavaScript's
  ``charCodeAt`` yields them. For text in the Basic Multilingual Plane this is
  the same as hashing code points; characters outside it (emoji) are two
  surrogate units, as in every JavaScript SDK.
- Hash version 2: ``fnv1a32(str(fnv1a32(seed + unit))) % 10000 / 10000``;
  version 1 (kept for compatibility): ``fnv1a32(unit + seed) % 1000 / 1000``.
- Bucket ranges: one range per variation, starting at the cumulative weight and
  ``coverage * weight`` wide, so raising coverage only widens the ranges and no
  unit already inside one moves to another variation.
- Namespaces: the unit is in ``(name, start, end)`` when its version-1 hash with
  seed ``"__" + name`` falls in ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "Assignment",
    "Namespace",
    "assign_experiment",
    "assign_variation",
    "choose_variation",
    "fnv1a32",
    "gb_hash",
    "get_bucket_ranges",
    "get_equal_weights",
    "in_namespace",
]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_MASK32 = 0xFFFFFFFF

BucketRange = tuple[float, float]
Namespace = tuple[str, float, float]  # (name, start, end): the unit's namespace hash must fall in [start, end)


def fnv1a32(text: str, state: int = _FNV_OFFSET) -> int:
    """FNV-1a, 32 bits, over UTF-16 code units (JavaScript's ``charCodeAt``).

    ``state`` continues a hash: ``fnv1a32(b, fnv1a32(a)) == fnv1a32(a + b)``.
    """
    units = text.encode("ascii") if text.isascii() else memoryview(text.encode("utf-16-le")).cast("H")
    value = state
    for unit in units:
        value = ((value ^ unit) * _FNV_PRIME) & _MASK32
    return value


@lru_cache(maxsize=1024)
def _seed_state(seed: str) -> int:
    return fnv1a32(seed)


def gb_hash(seed: str, value: str, version: int) -> float | None:
    """GrowthBook's ``hash``: a number in [0, 1), or None for an unknown hash version."""
    if version == 2:
        # The seed is hashed once per seed, not once per unit.
        return (fnv1a32(str(fnv1a32(value, _seed_state(seed)))) % 10000) / 10000
    if version == 1:
        return (fnv1a32(value + seed) % 1000) / 1000
    return None


def get_equal_weights(count: int) -> list[float]:
    return [1 / count] * count if count > 0 else []


def _plain_sum(values: Sequence[float]) -> float:
    # Left to right, as JavaScript's reduce does (Python 3.12's sum() compensates rounding).
    total = 0.0
    for value in values:
        total += value
    return total


def get_bucket_ranges(count: int, coverage: float = 1.0, weights: Sequence[float] | None = None) -> list[BucketRange]:
    """GrowthBook's ``getBucketRanges``: weights of the wrong length, or not summing to 1 (±0.01), become equal."""
    coverage = min(max(coverage, 0.0), 1.0)
    equal = get_equal_weights(count)
    chosen = list(weights) if weights is not None and len(weights) == count else equal
    total = _plain_sum(chosen)
    if total < 0.99 or total > 1.01:
        chosen = equal
    ranges: list[BucketRange] = []
    cumulative = 0.0
    for weight in chosen:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_variation(bucket: float, ranges: Sequence[BucketRange]) -> int:
    """The index of the range holding ``bucket``, or -1 when it is in none (outside coverage)."""
    for index, (start, end) in enumerate(ranges):
        if start <= bucket < end:
            return index
    return -1


def in_namespace(unit: str, namespace: Namespace) -> bool:
    name, start, end = namespace
    bucket = gb_hash("__" + name, unit, 1)
    return bucket is not None and start <= bucket < end


@dataclass(frozen=True, slots=True)
class Assignment:
    """GrowthBook's result fields: ``variation`` is -1 when the unit gets no variation."""

    variation: int
    in_experiment: bool
    hash_used: bool
    bucket: float | None = None


_NOT_IN_EXPERIMENT = Assignment(-1, False, False)


def assign_variation(
    unit: str,
    *,
    key: str,
    variations: int,
    seed: str | None = None,
    hash_version: int = 2,
    coverage: float = 1.0,
    weights: Sequence[float] | None = None,
    namespace: Namespace | None = None,
    forced: Mapping[str, int] | None = None,
    ranges: Sequence[BucketRange] | None = None,
) -> Assignment:
    """Run the assignment steps of GrowthBook's ``runExperiment`` that apply to a server-side experiment.

    ``forced`` pins units to a variation (GrowthBook's ``forcedVariations``, for QA):
    a forced unit is in the experiment but no hash was used, so it is not part of
    the randomized sample. ``ranges`` are ``get_bucket_ranges(variations, coverage,
    weights)`` computed in advance, for callers that assign many units.
    """
    if variations < 2:
        return _NOT_IN_EXPERIMENT
    if forced is not None and unit in forced:
        return Assignment(forced[unit], True, False)
    if not unit:
        return _NOT_IN_EXPERIMENT
    if namespace is not None and not in_namespace(unit, namespace):
        return _NOT_IN_EXPERIMENT
    bucket = gb_hash(seed or key, unit, hash_version)
    if bucket is None:
        return _NOT_IN_EXPERIMENT
    variation = choose_variation(
        bucket, ranges if ranges is not None else get_bucket_ranges(variations, coverage, weights)
    )
    if variation < 0:
        return _NOT_IN_EXPERIMENT
    return Assignment(variation, True, True, bucket)


def assign_experiment(definition: Mapping[str, Any], unit: str) -> Assignment:
    """Assign ``unit`` with a GrowthBook-style experiment (the ``assignment`` block of an experiment from the API).

    Accepts the whole experiment as ``GET /v1/experiments/{key}`` returns it, or just its ``assignment``.
    The whole experiment also pins its ``forced_variants`` (QA units), as the service does. Explicit
    ``ranges`` (GrowthBook's, given for an experiment backing a rollout) replace those of the weights.
    """
    spec = definition.get("assignment", definition)
    namespace = spec.get("namespace")
    variations = list(spec["variations"])
    forced_keys: Mapping[str, str] = definition.get("forced_variants") or {}
    forced = {qa_unit: variations.index(key) for qa_unit, key in forced_keys.items() if key in variations}
    return assign_variation(
        unit,
        key=spec["key"],
        variations=len(variations),
        seed=spec.get("seed"),
        hash_version=spec.get("hashVersion", 1),
        coverage=spec.get("coverage", 1.0),
        weights=spec.get("weights"),
        namespace=(namespace[0], namespace[1], namespace[2]) if namespace else None,
        forced=forced or None,
        ranges=[(start, end) for start, end in spec["ranges"]] if spec.get("ranges") else None,
    )
