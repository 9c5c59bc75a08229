"""A batch's ``sent_at`` corrects its events' timestamps for the sender's clock; without it nothing moves.

The service moves each event by (its clock on receipt) - ``sent_at``, so an event's stored time relative to
the stored receipt time is exactly its time relative to ``sent_at`` on the sender's clock: the assertions
compare those differences, which do not depend on how long anything took.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import count_rows, problem
from tests.experiments.conftest import Client


def event(key: str, at: datetime) -> dict[str, Any]:
    return {"unit": "user-1", "metric": "converted", "idempotency_key": key, "timestamp": at.isoformat()}


async def stored(engine: AsyncEngine) -> dict[str, tuple[datetime, datetime]]:
    """(occurred_at, received_at) of each stored event, by idempotency key."""
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT idempotency_key, occurred_at, received_at FROM outcome_events"))
        return {key: (occurred, received) for key, occurred, received in rows.all()}


async def test_events_from_a_clock_minutes_off_are_filed_at_the_services_time(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    ahead = now + timedelta(minutes=10)  # further ahead than the 5 minutes an event may be in the future
    behind = now - timedelta(minutes=7)
    batches = [
        {"events": [event("ahead", ahead), event("ahead-earlier", ahead - timedelta(seconds=30))], "sent_at": ahead},
        {"events": [event("behind", behind - timedelta(seconds=3))], "sent_at": behind},
    ]
    for batch in batches:
        body = {"events": batch["events"], "sent_at": batch["sent_at"].isoformat()}
        response = await client.post("/v1/events", json=body, headers=setup)
        assert response.status_code == 200, response.text
    rows = await stored(clean_database)
    filed = {key: occurred - received for key, (occurred, received) in rows.items()}
    assert filed == {
        "ahead": timedelta(0),
        "ahead-earlier": timedelta(seconds=-30),
        "behind": timedelta(seconds=-3),
    }


async def test_an_event_the_correction_would_move_off_the_calendar_is_rejected_for_its_timestamp(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    sent_at = datetime.now(UTC) - timedelta(minutes=5)
    last = datetime.max.replace(tzinfo=UTC)
    body = {"events": [event("last", last), event("ok", sent_at)], "sent_at": sent_at.isoformat()}
    response = await client.post("/v1/events", json=body, headers=setup)
    assert response.status_code == 207, response.text
    items = response.json()["items"]
    assert [(i["status"], [e["field"] for e in i.get("errors") or []]) for i in items] == [
        ("rejected", ["timestamp"]),
        ("accepted", []),
    ]


async def test_a_batch_without_sent_at_keeps_its_timestamps_as_sent(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    at = datetime.now(UTC) - timedelta(minutes=7)
    response = await client.post("/v1/events", json={"events": [event("old-client", at)]}, headers=setup)
    assert response.status_code == 200, response.text
    assert (await stored(clean_database))["old-client"][0] == at


async def test_a_sent_at_further_off_than_a_day_is_refused_naming_it(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    for off in (timedelta(days=2), -timedelta(days=1, minutes=1)):
        sent_at = datetime.now(UTC) + off
        body = {"events": [event(f"off-{off}", sent_at)], "sent_at": sent_at.isoformat()}
        response = await client.post("/v1/events", json=body, headers=setup)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in problem(response)["errors"]] == ["sent_at"]
    response = await client.post(
        "/v1/events", json={"events": [event("naive", datetime.now(UTC))], "sent_at": "2026-01-01T00:00:00"},
        headers=setup,
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert [e["field"] for e in problem(response)["errors"]] == ["sent_at"]
    assert await count_rows(clean_database, "outcome_events") == 0
