"""How a run was scored, as a promotion gate names it: pure comparisons of scorer specs and pass rules.

A gate that names its scoring takes as evidence only a run scored with exactly those scorers (in any
order) and that pass rule: a run scored by a lenient scorer (``contains ""``) would meet any pass rate,
and a regression test between runs scored differently compares nothing. A judge the gate names without
a version (or without its config's version) matches a run's judge of any version: a run pins its
judge's version when it starts, so only the gate decides whether the version matters.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.evals.scorers import Judge, ScorerInvalidError, ScorerSpec, parse_pass_rule, parse_scorers

ALL_PASS: dict[str, Any] = {"all": True}
# A judge's fields a gate may leave open: left out of the gate's spec, any value of the run's matches.
OPEN_JUDGE_FIELDS = ("version", "config_version")


@dataclass(frozen=True, slots=True)
class Scoring:
    """Scorer specs as ``as_dict`` stores them (defaults filled in) and the pass rule's ``as_dict``."""

    scorers: tuple[dict[str, Any], ...]
    pass_rule: dict[str, Any]


def normalise(scorers: Sequence[Any], pass_rule: Mapping[str, Any] | None) -> Scoring:
    """The scoring of a request: raises ``ScorerInvalidError`` naming ``scorers[i].FIELD`` or ``pass_rule``."""
    specs = parse_scorers(list(scorers))
    return Scoring(tuple(spec.as_dict() for spec in specs), parse_pass_rule(pass_rule, specs).as_dict())


def of_run(scorers: Sequence[Mapping[str, Any]], pass_rule: Mapping[str, Any] | None) -> Scoring:
    """A stored run's scoring, normalised as a gate's is (so defaults added since it ran compare alike);
    a spec that no longer parses is kept as stored, and matches only itself."""
    try:
        return normalise(scorers, pass_rule)
    except ScorerInvalidError:
        return Scoring(tuple(dict(spec) for spec in scorers), dict(pass_rule or ALL_PASS))


def _compared(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What of a spec counts: all but ``name``, which only labels its results."""
    return {key: value for key, value in spec.items() if key != "name"}


def spec_matches(wanted: Mapping[str, Any], got: Mapping[str, Any]) -> bool:
    """Whether a run's scorer ``got`` is the gate's scorer ``wanted`` (a judge's open fields match any value)."""
    want, have = _compared(wanted), _compared(got)
    if want.get("kind") == Judge.kind and have.get("kind") == Judge.kind:
        for key in OPEN_JUDGE_FIELDS:
            if key not in want:
                have.pop(key, None)
    return want == have


def matches(wanted: Scoring, got: Scoring) -> bool:
    """Whether ``got`` (a run's) is scored as ``wanted`` (a gate's): the same pass rule and a one-to-one
    pairing of the scorers, in any order."""
    if wanted.pass_rule != got.pass_rule or len(wanted.scorers) != len(got.scorers):
        return False
    paired: dict[int, int] = {}  # run scorer index -> gate scorer index

    def pair(i: int, seen: set[int]) -> bool:
        for j, have in enumerate(got.scorers):
            if j in seen or not spec_matches(wanted.scorers[i], have):
                continue
            seen.add(j)
            if j not in paired or pair(paired[j], seen):
                paired[j] = i
                return True
        return False

    return all(pair(i, set()) for i in range(len(wanted.scorers)))


def _describe_spec(raw: Mapping[str, Any]) -> str:
    """``kind(field=value, ...)`` with the fields that differ from the kind's defaults."""
    try:
        (spec,) = parse_scorers([dict(raw)])
    except (ScorerInvalidError, ValueError):
        return json.dumps(dict(raw), sort_keys=True, default=str)
    return spec.kind + _fields(spec)


def _fields(spec: ScorerSpec) -> str:
    shown = []
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if field.name == "name" or (field.default is not dataclasses.MISSING and value == field.default):
            continue
        if isinstance(value, tuple):
            value = list(value)
        shown.append(f"{field.name}={json.dumps(value, default=str)}")
    return f"({', '.join(shown)})" if shown else ""


def describe(scoring: Scoring) -> str:
    """The scoring readably: ``contains(values=["refund"]), judge(prompt="grader", version=2)``, then the pass
    rule when it is not that every scorer passes."""
    text = ", ".join(_describe_spec(spec) for spec in scoring.scorers)
    if scoring.pass_rule != ALL_PASS:
        (rule, value), *_ = scoring.pass_rule.items()
        text += f" with pass rule {rule} {json.dumps(value)}"
    return text
