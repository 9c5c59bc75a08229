"""The stand-in backend's error rate and latency spread (``errors:R``, ``latency:LOW:HIGH``): near the rates and
bounds asked for, and the same for the same model name and request number in every run."""

from __future__ import annotations

import statistics

import pytest

from tests.completions.fault_server import spread

REQUESTS = range(5000)


def test_about_the_asked_share_of_requests_fails() -> None:
    failed = [spread("errors:0.10/a", "errors:0.10", n)[0] for n in REQUESTS]
    assert 0.09 < sum(failed) / len(failed) < 0.11  # 10% of 5000: a standard deviation of 0.4 points
    assert not any(spread("errors:0/a", "errors:0", n)[0] for n in REQUESTS)


def test_the_same_name_and_number_give_the_same_fate_and_another_name_another() -> None:
    first = [spread("errors:0.5/a", "errors:0.5", n) for n in REQUESTS]
    assert first == [spread("errors:0.5/a", "errors:0.5", n) for n in REQUESTS]
    other = [spread("errors:0.5/b", "errors:0.5", n) for n in REQUESTS]
    assert 0.4 < sum(a != b for a, b in zip(first, other, strict=True)) / len(first) < 0.6  # independent


def test_latencies_spread_evenly_between_the_bounds() -> None:
    delays = [spread("latency:50:250/a", "latency:50:250", n)[1] for n in REQUESTS]
    assert min(delays) >= 0.05
    assert max(delays) <= 0.25
    p95 = statistics.quantiles(delays, n=20)[-1]
    assert p95 == pytest.approx(0.05 + 0.95 * 0.2, rel=0.02)


def test_errors_and_latency_combine() -> None:
    drawn = [spread("errors:0.2,latency:10:20/a", "errors:0.2,latency:10:20", n) for n in REQUESTS]
    assert 0.18 < sum(failed for failed, _ in drawn) / len(drawn) < 0.22
    assert all(0.01 <= delay <= 0.02 for _, delay in drawn)


def test_an_unknown_part_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown part"):
        spread("errors:0.1,jitter:3", "errors:0.1,jitter:3", 0)
