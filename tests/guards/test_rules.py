"""The deterministic detectors, from ``cases/rules.json``: [description, kind, text, options, expected findings]."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.guards.rules import find, redacted

CASES = json.loads((Path(__file__).parent / "cases" / "rules.json").read_text())


@pytest.mark.parametrize(("kind", "text", "options", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_detector_finds_from_cases(kind: str, text: str, options: dict[str, Any], expected: list[list[str]]) -> None:
    assert [[f.kind, text[f.start : f.end]] for f in find(kind, text, options)] == expected


def test_redaction_replaces_each_finding_with_its_marker() -> None:
    text = "mail jane@example.com, ssn 123-45-6789."
    assert redacted(text, find("pii", text)) == "mail [EMAIL], ssn [SSN]."


# A pattern that backtracks without end on a long run of "a" and a stop: ``re`` takes longer than the age of the
# machine on this text; a search cut off after ``PATTERN_TIMEOUT_SECONDS`` finds the whole text.
RUNAWAY = r"(a|aa)+$"


@pytest.mark.timeout(30)
def test_a_deny_pattern_that_cannot_decide_in_time_finds_the_whole_text() -> None:
    text = "a" * 60 + "!"

    assert [(f.kind, f.start, f.end) for f in find("deny_patterns", text, {"patterns": ["zebra", RUNAWAY]})] == [
        ("pattern:1", 0, len(text))
    ]
    assert [f.kind for f in find("deny_patterns", "a" * 8, {"patterns": [RUNAWAY]})] == ["pattern:0"]  # it decides
