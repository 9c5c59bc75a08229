"""Whether a version can serve production's callers, from kinds and input schemas alone (pure, no I/O).

Experiments and rollouts route a unit's production traffic to another version of the prompt. Callers send
what production's version takes; a routed version that cannot render any such request refuses every one of
its units (422 variables_invalid) after the unit was exposed and before a completion is recorded, so the
results and guardrails never see it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class VersionInputs:
    """What a version takes from its callers: its number, its kind (text or chat) and its input schema."""

    number: int
    kind: str
    input_schema: Mapping[str, Any]


def production_refusals(production: VersionInputs, candidate: VersionInputs) -> list[str]:
    """Why the candidate cannot run what production's callers send: its variable conflicts with production's, then
    its kind when production's is the other one. Empty when it can serve them."""
    refusals = [
        f"{conflict} (production: version {production.number})"
        for conflict in variable_conflicts(production.input_schema, candidate.input_schema)
    ]
    kind = kind_refusal(candidate.kind, production.kind, production.number)
    return refusals if kind is None else [*refusals, kind]


def kind_refusal(kind: str, reference_kind: str, reference_number: int, variant: str | None = None) -> str | None:
    """Why a version of ``kind`` cannot run the requests of production's version (``reference_number``), or, with
    ``variant``, of that variant's version (a prompt with no production); None when the kinds are the same.

    The OpenAI door runs a prompt only on its kind's endpoint, and apps that render expect its kind's shape: every
    such request routed to the version would be refused after its unit's exposure, before a completion is recorded.
    """
    if kind == reference_kind:
        return None
    if variant is None:
        named, runs = f"production (version {reference_number})", "production's callers send"
    else:
        named, runs = f"variant '{variant}' (version {reference_number})", f"variant '{variant}' runs"
    return f"is a {kind} version and {named} a {reference_kind} one: requests that {runs} would be refused on it"


def variable_conflicts(production: Mapping[str, Any], candidate: Mapping[str, Any]) -> list[str]:
    """Why no request that production renders can render on the candidate, from their input schemas.

    A variable the candidate requires that production refuses, or one production requires that the
    candidate refuses: every caller sending what production takes would be refused on the candidate (422)
    before a completion is recorded, so no metric would see those failures. Empty when some request may
    render on both.
    """

    def accepts(schema: Mapping[str, Any], name: str) -> bool:
        return name in schema.get("properties", {}) or schema.get("additionalProperties", True) is not False

    conflicts = [
        f"requires variable '{name}', which production refuses"
        for name in candidate.get("required", [])
        if not accepts(production, name)
    ]
    conflicts += [
        f"refuses variable '{name}', which production requires"
        for name in production.get("required", [])
        if not accepts(candidate, name)
    ]
    return conflicts
