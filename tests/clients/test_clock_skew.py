"""An app whose clock is minutes off still files its outcomes at the registry's time.

The client's clock (its ``wall_clock`` seam) is frozen minutes off the test machine's, so an event it stamps
and the ``sent_at`` of its batch read the same instant: corrected by the registry, the event's stored time
is exactly the registry's receipt time, whatever the two clocks say and however long the request took.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from prompt_registry_client import BatchPolicy, CachePolicy, RegistryClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.clients.conftest import Live


@pytest.mark.parametrize("off", [timedelta(minutes=-10), timedelta(minutes=12)], ids=["behind", "ahead"])
async def test_events_from_an_app_clock_minutes_off_are_stored_at_the_registrys_time(
    live: Live, clean_database: AsyncEngine, off: timedelta
) -> None:
    live.ok(live.admin.post("/v1/metrics", json={"key": "score", "kind": "continuous", "aggregation": "sum"}))
    frozen = datetime.now(UTC) + off

    def app_thread() -> None:
        batches = BatchPolicy(flush_interval=3600.0)
        with RegistryClient(live.url, live.key, batches=batches, cache=CachePolicy(watch_changes=False)) as app:
            app._core.wall_clock = lambda: frozen
            app.track("user-1", "score", 2.0)
            app.track("user-1", "score", 3.0, timestamp=frozen - timedelta(seconds=90))  # 90 s before sending
            assert app.flush()
            assert app.dropped_events == 0

    await asyncio.to_thread(app_thread)
    async with clean_database.connect() as connection:
        rows = (await connection.execute(text("SELECT value, occurred_at, received_at FROM outcome_events"))).all()
    assert sorted((value, occurred - received) for value, occurred, received in rows) == [
        (2.0, timedelta(0)),
        (3.0, timedelta(seconds=-90)),
    ]
