"""Whether a version can serve production's callers, from input schemas alone (pure, no I/O).

Experiments and rollouts route a unit's production traffic to another version of the prompt. Callers send
what production's version takes; a routed version that cannot render any such request refuses every one of
its units (422 variables_invalid) after the unit was exposed and before a completion is recorded, so the
results and guardrails never see it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
