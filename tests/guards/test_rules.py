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
