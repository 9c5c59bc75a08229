"""The client's pure parts: the SSE parser (from a case file), the cache's states, the outbox, result tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas
import pytest
from prompt_registry_client._cache import Freshness, TtlCache
from prompt_registry_client._config import BatchPolicy
from prompt_registry_client._models import RESULT_COLUMNS, results_from_json
from prompt_registry_client._outbox import Outbox
from prompt_registry_client._sse import SSEParser

CASES = Path(__file__).parent / "cases"
SSE = json.loads((CASES / "sse.json").read_text())


@pytest.mark.parametrize(("lines", "expected"), [case[1:] for case in SSE], ids=[case[0] for case in SSE])
def test_server_sent_events_are_parsed_line_by_line(lines: list[str], expected: list[list[str]]) -> None:
    parser = SSEParser()
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    if (last := parser.close()) is not None:
        events.append(last)
    assert [[e.event, e.data] for e in events] == expected


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cache(clock: Clock, max_entries: int = 10) -> TtlCache[str, str]:
    return TtlCache(ttl=60, max_entries=max_entries, group=lambda key: key.split("@")[0], clock=clock)


def test_a_copy_is_fresh_for_its_ttl_then_expired() -> None:
    clock = Clock()
    copies = cache(clock)
    assert copies.lookup("greet")[0] is Freshness.MISSING
    copies.store("greet", "v1", etag='"a"', token=copies.token())
    assert copies.lookup("greet")[0] is Freshness.FRESH
    clock.now = 60
    assert copies.lookup("greet")[0] is Freshness.EXPIRED
    assert copies.renew("greet", token=copies.token()) is not None
    assert copies.lookup("greet")[0] is Freshness.FRESH


def test_an_invalidated_copy_is_kept_but_unverified_until_revalidated() -> None:
    copies = cache(Clock())
    copies.store("greet", "v1", etag=None, token=copies.token())
    copies.store("greet@2", "v2", etag=None, token=copies.token())
    copies.store("other", "x", etag=None, token=copies.token())
    assert sorted(copies.invalidate("greet")) == ["greet", "greet@2"]
    freshness, entry = copies.lookup("greet")
    assert (freshness, entry.value if entry else None) == (Freshness.UNVERIFIED, "v1")
    assert copies.lookup("other")[0] is Freshness.FRESH
    copies.store("greet", "v2", etag=None, token=copies.token())
    assert copies.lookup("greet")[0] is Freshness.FRESH


def test_a_fetch_that_started_before_a_change_stores_an_unverified_copy() -> None:
    copies = cache(Clock())
    copies.store("greet", "v1", etag=None, token=copies.token())
    token = copies.token()  # a refresh starts...
    copies.invalidate("greet")  # ...a promotion arrives meanwhile...
    copies.store("greet", "v1 again", etag=None, token=token)  # ...and the refresh answers with the old version
    assert copies.lookup("greet")[0] is Freshness.UNVERIFIED
    assert copies.renew("greet", token=token) is not None
    assert copies.lookup("greet")[0] is Freshness.UNVERIFIED, "a 304 from before the change proves nothing"
    other_token = copies.token()
    copies.invalidate_all()
    copies.store("other", "x", etag=None, token=other_token)
    assert copies.lookup("other")[0] is Freshness.UNVERIFIED


def test_the_least_recently_used_copy_goes_first() -> None:
    copies = cache(Clock(), max_entries=2)
    for key in ("a", "b"):
        copies.store(key, key, etag=None, token=0)
    copies.lookup("a")
    copies.store("c", "c", etag=None, token=0)
    assert [copies.lookup(k)[0] for k in ("a", "b", "c")] == [Freshness.FRESH, Freshness.MISSING, Freshness.FRESH]


def test_the_outbox_skips_repeated_exposures_and_gives_batches_back_in_order() -> None:
    outbox = Outbox(BatchPolicy(max_batch=2, max_pending=5))  # exposures and events together
    assert outbox.add_exposure("exp", 1, "u1", "a")
    assert not outbox.add_exposure("exp", 1, "u1", "a"), "the service keeps the first exposure only"
    assert outbox.add_exposure("exp", 2, "u1", "b"), "a new phase is a new exposure"
    for value in (1.0, 2.0, 3.0):
        outbox.add("events", {"value": value})
    assert not outbox.add("events", {"value": 4.0})
    assert outbox.dropped == 1
    batch = outbox.take("events")
    assert [e["value"] for e in batch] == [1.0, 2.0]
    outbox.give_back("events", batch)
    assert [e["value"] for e in outbox.take("events")] == [1.0, 2.0]
    assert [e["value"] for e in outbox.take("events")] == [3.0]


def effect(estimate: float) -> dict[str, float]:
    return {
        "estimate": estimate,
        "std_error": 0.01,
        "ci_low": estimate - 0.02,
        "ci_high": estimate + 0.02,
        "p_value": 0.04,
    }


def results_body() -> dict[str, Any]:
    def variant(key: str, mean: float, versus: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "variant": key,
            "units": 100,
            "mean": mean,
            "std_dev": 0.5,
            "ci_low": mean - 0.1,
            "ci_high": mean + 0.1,
            "vs_control": versus,
        }

    comparison = {
        "absolute": effect(0.05),
        "relative": effect(0.25),
        "p_value": 0.04,
        "p_value_adjusted": 0.08,
        "significant": False,
        "chance_to_beat_control": 0.97,
        "credible_interval": None,
        "dof": 198.0,
        "sequential": None,
        "cuped_theta": None,
    }
    return {
        "experiment": "tone",
        "phase": 1,
        "status": "running",
        "alpha": 0.05,
        "correction": "holm",
        "sequential": False,
        "cuped": False,
        "units": 200,
        "units_in_multiple_variants": 0,
        "pending_units": 0,
        "variants": [
            {"variant": "control", "units": 100, "expected_share": 0.5, "observed_share": 0.5},
            {"variant": "warm", "units": 100, "expected_share": 0.5, "observed_share": 0.5},
        ],
        "srm": {"p_value": 1.0, "flagged": False, "threshold": 0.001},
        "metrics": [
            {
                "metric": "thumbs_up",
                "role": "primary",
                "kind": "binomial",
                "aggregation": "any",
                "direction": "higher",
                "variants": [variant("control", 0.2, None), variant("warm", 0.25, comparison)],
            }
        ],
        "computed_at": "2026-01-01T00:00:00Z",
    }


def test_results_are_plain_objects_and_a_dataframe() -> None:
    results = results_from_json(results_body())
    warm = results.metrics[0].variants[1]
    assert warm.vs_control is not None
    assert warm.vs_control.relative is not None
    assert (warm.mean, warm.vs_control.relative.estimate, results.srm_flagged) == (0.25, 0.25, False)
    frame = results.to_pandas()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == list(RESULT_COLUMNS)
    assert frame.shape == (2, len(RESULT_COLUMNS))
    control, treatment = frame.to_dict("records")
    assert control["variant"] == "control"
    assert pandas.isna(control["abs_diff"]), "the control has no comparison"
    assert (treatment["variant"], treatment["abs_diff"], treatment["chance_to_beat_control"]) == ("warm", 0.05, 0.97)
