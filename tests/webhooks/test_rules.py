from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prompt_registry_client.webhooks import sign, signature_header, verify_signature

from registry.webhooks.rules import failing_too_long, pattern_problem, retry_delay, subscribes

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


@pytest.mark.parametrize(
    ("failures", "since_hour", "now_hour", "min_failures", "min_hours", "disabled"),
    [c[1:] for c in CASES["disabling"]],
    ids=[c[0] for c in CASES["disabling"]],
)
def test_when_a_failing_webhook_is_disabled(
    failures: int, since_hour: float | None, now_hour: float, min_failures: int, min_hours: float, disabled: bool
) -> None:
    start = datetime(2026, 12, 1, tzinfo=UTC)
    since = None if since_hour is None else start + timedelta(hours=since_hour)
    found = failing_too_long(
        failures,
        since,
        start + timedelta(hours=now_hour),
        min_failures=min_failures,
        min_duration=timedelta(hours=min_hours),
    )
    assert found is disabled
