"""What a client does with events and exposures recorded after it was closed: nothing would ever send them."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prompt_registry_client import AsyncRegistryClient, BatchPolicy, CachePolicy, RegistryClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.clients.conftest import Live, LiveFactory, text
from tests.clients.test_experiments import experiment_for, start_experiment
from tests.conftest import count_rows

NO_FEED = CachePolicy(watch_changes=False)
WAIT = BatchPolicy(flush_interval=30)  # sent on close, not before


def closed_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "the client is closed" in r.getMessage()]


async def test_events_tracked_after_close_are_dropped_counted_and_warned_once(
    live: Live, clean_database: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    live.ok(live.admin.post("/v1/metrics", json={"key": "closed-score", "kind": "continuous", "aggregation": "sum"}))

    def use() -> RegistryClient:
        registry = RegistryClient(live.url, live.key, cache=NO_FEED, batches=WAIT)
        registry.track("user-1", "closed-score", 1.0)
        registry.close()
        with caplog.at_level(logging.WARNING, logger="prompt_registry_client"):
            registry.track("user-2", "closed-score", 1.0)
            registry.track("user-3", "closed-score", 1.0)
        return registry

    registry = await asyncio.to_thread(use)
    assert registry.pending_events == 0, "events tracked after close sat in a queue nothing sends"
    assert registry.dropped_events == 2
    assert len(closed_warnings(caplog)) == 1
    assert await count_rows(clean_database, "outcome_events") == 1


async def test_async_events_tracked_after_aclose_are_dropped_counted_and_warned_once(
    live: Live, clean_database: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    live.ok(live.admin.post("/v1/metrics", json={"key": "closed-score", "kind": "continuous", "aggregation": "sum"}))
    registry = AsyncRegistryClient(live.url, live.key, cache=NO_FEED, batches=WAIT)
    registry.track("user-1", "closed-score", 1.0)
    await registry.aclose()
    with caplog.at_level(logging.WARNING, logger="prompt_registry_client"):
        registry.track("user-2", "closed-score", 1.0)
        registry.track("user-3", "closed-score", 1.0)
    assert registry.pending_events == 0, "events tracked after aclose sat in a queue nothing sends"
    assert registry.dropped_events == 2
    assert len(closed_warnings(caplog)) == 1
    assert await count_rows(clean_database, "outcome_events") == 1


def test_an_exposure_of_a_render_after_close_is_dropped_and_counted(live_registry: LiveFactory) -> None:
    live = live_registry(experiment_exposure_flush_seconds=0.05)
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    start_experiment(live, experiment_for("tone", "greet", {"key": "tone", "variations": 2, "hashVersion": 2}))
    registry = RegistryClient(live.url, live.key, cache=NO_FEED, batches=WAIT)
    registry.render("greet", {"name": "Ada"}, unit="user-1")  # caches the prompt and the experiment
    registry.close()
    assert registry.dropped_events == 0
    registry.render("greet", {"name": "Ada"}, unit="user-2")  # served from the cache, the exposure unsendable
    assert registry.pending_events == 0
    assert registry.dropped_events == 1
