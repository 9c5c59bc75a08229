"""An event that cannot be sent as JSON is dropped and counted, not the batch it travels in."""

from __future__ import annotations

import asyncio

from prompt_registry_client import BatchPolicy, CachePolicy, RegistryClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.clients.conftest import Live
from tests.conftest import count_rows


async def test_a_nan_or_a_lone_surrogate_loses_only_its_own_event(live: Live, clean_database: AsyncEngine) -> None:
    live.ok(live.admin.post("/v1/metrics", json={"key": "dec6-nan", "kind": "continuous", "aggregation": "sum"}))
    batches = BatchPolicy(flush_interval=30)  # one batch, sent by flush()

    def app_thread() -> tuple[bool, int]:
        with RegistryClient(live.url, live.key, cache=CachePolicy(watch_changes=False), batches=batches) as registry:
            for i in range(5):
                registry.track(f"user-{i}", "dec6-nan", 1.0)
            registry.track("user-nan", "dec6-nan", float("nan"))
            registry.track("user-\ud800", "dec6-nan", 1.0)
            return registry.flush(), registry.dropped_events

    flushed, dropped = await asyncio.to_thread(app_thread)
    assert (flushed, dropped) == (True, 2), "the two that cannot be sent are counted, the five others sent"
    assert await count_rows(clean_database, "outcome_events") == 5
