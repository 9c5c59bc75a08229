"""Hostile metric values: too large to sum, and what the statistics do with sums that overflowed anyway."""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime

import pytest

from registry.stats import Arm, Moments, NotEnoughDataError, adjust, compare
from registry.stats.quantiles import bucket_of, value_of
from tests.conftest import AppClient
from tests.experiments.conftest import make_metric

Headers = dict[str, str]


async def test_an_event_value_too_large_to_sum_is_rejected_naming_the_value(client: AppClient, admin: Headers) -> None:
    """1e308 passed as finite, yet two of them (or one's square) summed to infinity: the results then showed null
    means and p-values, and a quantile metric's unit stopped the aggregator. Beyond ±1e15 an event is refused."""
    await make_metric(client, admin, "dec6-spend", kind="continuous", aggregation="sum")
    now = datetime.now(UTC).isoformat()
    values = [1e308, -1e16, 1e15, -1e15, 12.5]
    events = [
        {"unit": "dec6-u", "metric": "dec6-spend", "value": v, "idempotency_key": f"dec6-big-{i}", "timestamp": now}
        for i, v in enumerate(values)
    ]
    response = await client.post("/v1/events", json={"events": events}, headers=admin)
    assert response.status_code == 207, response.text  # some accepted, some rejected
    items = response.json()["items"]
    assert [item["status"] for item in items] == ["rejected", "rejected", "accepted", "accepted", "accepted"]
    assert [error["field"] for error in items[0]["errors"]] == ["value"]
    assert [error["field"] for error in items[1]["errors"]] == ["value"]


def test_sums_that_overflowed_neither_stop_the_aggregator_nor_spoil_other_p_values() -> None:
    """Values stored before the bound, or sums of many: a quantile's histogram bucket of an infinite value raised
    OverflowError (the aggregator's whole batch failed, again at every run), and a bucket near the largest float
    read back as infinite or raised; a comparison of infinite sums gave NaN everywhere, and that NaN p-value in
    Holm's correction made every other metric's adjusted p-value 1."""
    for value in (math.inf, -math.inf, sys.float_info.max, 1e308):
        assert math.isfinite(value_of(bucket_of(value)))
    assert value_of(bucket_of(-math.inf)) < 0 < value_of(bucket_of(math.inf))

    overflowed = Arm(Moments(3, math.inf, math.inf))
    with pytest.raises(NotEnoughDataError, match="too large"):
        compare(overflowed, Arm(Moments(3, 1.0, 2.0)))  # refused, not NaN

    assert adjust([math.nan, 0.001, 0.002], "holm") == [1.0, 0.003, 0.004]
    assert adjust([0.001, 0.002, math.nan], "benjamini-hochberg") == [0.003, 0.003, 1.0]
    assert adjust([math.nan], "none") == [1.0]
