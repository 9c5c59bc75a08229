from __future__ import annotations

import json
from pathlib import Path

import pytest
from prompt_registry_client.webhooks import sign, signature_header, verify_signature

from registry.webhooks.rules import pattern_problem, retry_delay, subscribes

CASES = json.loads((Path(__file__).parents[1] / "cases" / "webhook_rules.json").read_text())


@pytest.mark.parametrize(
    ("pattern", "problem"), [c[1:] for c in CASES["patterns"]], ids=[c[0] for c in CASES["patterns"]]
)
def test_subscription_patterns(pattern: str, problem: str | None) -> None:
    found = pattern_problem(pattern)
    assert (found is None) == (problem is None)
    if problem:
        assert found is not None
        assert found.startswith(problem)


@pytest.mark.parametrize(
    ("patterns", "event", "expected"),
    [c[1:] for c in CASES["subscriptions"]],
    ids=[c[0] for c in CASES["subscriptions"]],
)
def test_subscriptions(patterns: list[str], event: str, expected: bool) -> None:
    assert subscribes(patterns, event) is expected


@pytest.mark.parametrize(
    ("attempts", "base", "cap", "jitter", "delay"),
    [c[1:] for c in CASES["delays"]],
    ids=[c[0] for c in CASES["delays"]],
)
def test_retry_delays(attempts: int, base: float, cap: float, jitter: float, delay: float) -> None:
    assert retry_delay(attempts, base=base, cap=cap, jitter=jitter) == pytest.approx(delay)


def test_signatures_verify_and_expire() -> None:
    body = b'{"type":"prompt.promoted"}'
    header = signature_header("whsec_x", 1_700_000_000, body)
    assert header == f"t=1700000000,v1={sign('whsec_x', 1_700_000_000, body)}"
    assert verify_signature("whsec_x", header, body, now=1_700_000_100)
    assert not verify_signature("whsec_y", header, body, now=1_700_000_100)
    assert not verify_signature("whsec_x", header, body + b" ", now=1_700_000_100)
    assert not verify_signature("whsec_x", header, body, now=1_700_001_000)
    assert not verify_signature("whsec_x", "garbage", body)
