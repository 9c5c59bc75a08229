"""Each batch of events says when it was sent by the app's clock (``sent_at``), so the registry can correct
events stamped by a clock that is off; a registry that predates ``sent_at`` still gets every event.

The app's clock is the core's ``wall_clock`` seam: the tests set it minutes off and read what was sent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prompt_registry_client import BatchPolicy, CachePolicy, RegistryClient, RetryPolicy

ACCEPTED = {"accepted": 1, "duplicates": 0, "rejected": 0, "items": [{"index": 0, "status": "accepted"}]}
OFF = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the app's clock, far from the test machine's


class AppClock:
    """A clock that reads ``now`` and then moves on by ``step``."""

    def __init__(self, now: datetime, step: timedelta = timedelta(0)) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> datetime:
        now = self.now
        self.now += self.step
        return now


class Registry:
    """Answers batches with ``answers`` in turn (the last one repeats), keeping each body it was sent."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def client(registry: Registry, clock: AppClock) -> RegistryClient:
    made = RegistryClient(
        "http://registry",
        transport=httpx.MockTransport(registry),
        cache=CachePolicy(watch_changes=False),
        batches=BatchPolicy(flush_interval=3600.0),  # sent by flush() only
        retries=RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.001),
    )
    made._core.wall_clock = clock
    return made


def test_a_batch_carries_the_apps_clock_when_it_is_sent() -> None:
    registry, clock = Registry(httpx.Response(200, json=ACCEPTED)), AppClock(OFF)
    with client(registry, clock) as app:
        app.track("user-1", "thumbs_up")
        clock.now = OFF + timedelta(seconds=40)  # queued for a while before it leaves
        assert app.flush()
    [body] = registry.bodies
    assert body["sent_at"] == (OFF + timedelta(seconds=40)).isoformat()
    assert [event["timestamp"] for event in body["events"]] == [OFF.isoformat()]


def test_a_batch_tried_again_says_when_each_try_was_sent() -> None:
    registry = Registry(httpx.Response(503), httpx.Response(200, json=ACCEPTED))
    clock = AppClock(OFF, step=timedelta(seconds=1))
    with client(registry, clock) as app:
        app.track("user-1", "thumbs_up")  # stamped OFF
        assert app.flush()
    assert [body["sent_at"] for body in registry.bodies] == [
        (OFF + timedelta(seconds=1)).isoformat(),
        (OFF + timedelta(seconds=2)).isoformat(),
    ]
    assert registry.bodies[0]["events"] == registry.bodies[1]["events"]


def test_a_registry_that_does_not_know_sent_at_gets_the_events_without_it() -> None:
    refused = {
        "type": "/problems/validation_error",
        "status": 422,
        "detail": "the request body is invalid",
        "errors": [{"field": "sent_at", "message": "Object contains unknown field `sent_at`"}],
    }
    registry = Registry(httpx.Response(422, json=refused), httpx.Response(200, json=ACCEPTED))
    with client(registry, AppClock(OFF)) as app:
        app.track("user-1", "thumbs_up")
        assert app.flush()
        app.track("user-2", "thumbs_up")
        assert app.flush()
        assert (app.dropped_events, app.pending_events) == (0, 0)
    assert ["sent_at" in body for body in registry.bodies] == [True, False, False]
    assert [[e["unit"] for e in body["events"]] for body in registry.bodies] == [["user-1"], ["user-1"], ["user-2"]]


def test_a_clock_the_registry_finds_too_far_off_loses_that_batch_and_says_so() -> None:
    refused = {
        "type": "/problems/validation_error",
        "status": 422,
        "detail": "the sender's clock is too far off to correct the events' timestamps",
        "errors": [{"field": "sent_at", "message": "is 2 days, 0:00:00 ahead of the service's clock"}],
    }
    registry = Registry(httpx.Response(422, json=refused))
    with client(registry, AppClock(OFF)) as app:
        app.track("user-1", "thumbs_up")
        app.flush()
        assert (app.dropped_events, app.pending_events) == (1, 0)
    assert len(registry.bodies) == 1, "not sent again without sent_at: its timestamps cannot be trusted"
