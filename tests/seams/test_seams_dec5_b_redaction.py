"""The redaction detectors on a hostile caller's text: they run on the request's own path (the semantic cache's
privacy check, stored inputs and outputs, the pii guard), so their cost must grow with the text, not its square.

A long run of letters once made the e-mail pattern try every start to the run's end: a million letters took
minutes, holding the event loop. The pytest timeout is the hang guard; what is checked is the answer.
"""

from __future__ import annotations

from registry.completions.redaction import redact
from registry.completions.semantic_privacy import holds_personal_data
from registry.guards.rules import pii_findings

LONG = 1_000_000  # about a request body's limit


def test_a_million_letters_without_an_address_come_back_unchanged() -> None:
    text = "a" * LONG
    assert redact(text) == text
    assert redact(text + "@") == text + "@"
    assert not holds_personal_data({"note": text})
    assert pii_findings(text + "@!") == []


def test_addresses_are_still_found_up_to_the_longest_local_part() -> None:
    local = "x" * 64
    assert redact(f"write to {local}@example.com now") == "write to [EMAIL] now"
    assert redact("a.b+c@mail.example.org, d%e@f.io") == "[EMAIL], [EMAIL]"
    assert holds_personal_data({"note": "a" * LONG + " ada@example.com"})
    [finding] = pii_findings("mail ada@example.com")
    assert (finding.start, finding.end, finding.replacement) == (5, 20, "[EMAIL]")
