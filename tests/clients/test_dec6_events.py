"""Events and exposures through a full outbox and a registry gone for longer than a float can double."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import pytest
from prompt_registry_client import BatchPolicy, CachePolicy, RegistryClient, RetryPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.clients.conftest import Live, LiveFactory, Recorder, RecordingTransport, text
from tests.clients.test_experiments import experiment_for, recorded_exposures, start_experiment
from tests.conftest import count_rows
from tests.waiting import eventually

NO_FEED = CachePolicy(watch_changes=False)


class AlwaysSet(threading.Event):
    """The sender's wake-up that never waits: its pauses of hours pass at once."""

    def wait(self, timeout: float | None = None) -> bool:
        return True


async def test_events_are_sent_after_more_failed_sends_than_a_float_can_double(
    live_registry: LiveFactory, clean_database: AsyncEngine
) -> None:
    live = live_registry()
    live.ok(live.admin.post("/v1/metrics", json={"key": "dec6-score", "kind": "continuous", "aggregation": "sum"}))
    recorder = Recorder()
    transport = RecordingTransport(recorder)
    registry = RegistryClient(live.url, live.key, transport=transport, cache=NO_FEED, retries=RetryPolicy(attempts=1))
    registry._send_now = AlwaysSet()

    def outage() -> None:
        live.stop()
        registry.track("user-1", "dec6-score", 1.0)
        eventually(lambda: recorder.tries("POST /v1/events") > 1100, "the sender retrying through a long outage")
        live.restart()
        eventually(lambda: registry.pending_events == 0, "the event sent once the registry is back")
        registry.close()

    await asyncio.to_thread(outage)
    assert await count_rows(clean_database, "outcome_events") == 1


def test_an_exposure_dropped_by_a_full_outbox_is_queued_when_its_unit_is_seen_again(live_registry: LiveFactory) -> None:
    live = live_registry(experiment_exposure_flush_seconds=0.05)
    live.prompt("dec6-full", text("v1"), text("v2"))
    start_experiment(
        live, experiment_for("dec6-full", "dec6-full", {"key": "dec6-full", "variations": 2, "hashVersion": 2})
    )
    batches = BatchPolicy(flush_interval=30, max_pending=1)
    with RegistryClient(live.url, live.key, cache=NO_FEED, batches=batches) as registry:
        registry.track("user-0", "converted", 1.0)  # the outbox is full
        registry.render("dec6-full", unit="dec6-unit")
        dropped = registry.dropped_events
        assert registry.flush()
        registry.render("dec6-full", unit="dec6-unit")  # room again: the unit's exposure is queued now
        queued = registry.pending_events
    assert (dropped, queued) == (1, 1)
    eventually(lambda: bool(recorded_exposures(live, "dec6-unit")), "the exposure recorded")


def test_events_dropped_by_a_full_outbox_are_logged_sparsely(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    batches = BatchPolicy(flush_interval=30, max_pending=1)
    with caplog.at_level(logging.WARNING, "prompt_registry_client"):
        with RegistryClient(live.url, live.key, cache=NO_FEED, batches=batches) as registry:
            for i in range(101):  # the first is queued, the other 100 dropped
                registry.track(f"user-{i}", "dec6-dropped", 1.0)
            dropped = registry.dropped_events
        warnings = [r for r in caplog.records if r.getMessage().startswith("dropped ")]
    assert dropped == 100
    assert len(warnings) == 7, "the 1st, 2nd, 4th ... 64th drop are logged, not each of a long outage's"


class RecordedPauses(threading.Event):
    """The sender's wake-up, recording each pause it is asked for; from the second on it waits to be released."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float] = []
        self.released = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.pauses.append(timeout or 0.0)
        if len(self.pauses) >= 2:
            self.released.wait()
        return True


def test_a_batch_refused_for_the_keys_rate_limit_waits_as_long_as_retry_after_says(live: Live) -> None:
    live.prompt("dec6-limited-events", text("v1"))
    body = {"name": "dec6-limited-events", "scopes": ["read", "write"], "rate_limit_per_minute": 1}
    created = live.ok(live.admin.post("/v1/keys", json=body))
    live.hold_the_minute()
    refusals: list[float] = []

    class SeeingRetryAfter(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if response.status_code == 429:
                refusals.append(float(response.headers["Retry-After"]))
            return response

    batches = BatchPolicy(flush_interval=0.01, close_timeout=0.1)
    retries = RetryPolicy(attempts=1)
    registry = RegistryClient(
        live.url, created["key"], transport=SeeingRetryAfter(), cache=NO_FEED, batches=batches, retries=retries
    )
    pauses = registry._send_now = RecordedPauses()
    try:
        registry.get_prompt("dec6-limited-events")  # the key's one request of this minute
        registry.track("user-1", "dec6-limited-events", 1.0)
        eventually(lambda: len(pauses.pauses) >= 2, "the sender pausing after the refusal")
    finally:
        pauses.released.set()
        registry.close()
    assert refusals, "the batch was refused for the rate limit"
    assert pauses.pauses[1] >= refusals[0], "the pause after a 429 is at least its Retry-After"
