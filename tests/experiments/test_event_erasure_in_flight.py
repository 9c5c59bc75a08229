"""Outcome events of a unit received during or after its erasure: none is written after it, on any replica."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from registry.experiments.privacy_digest import unit_digest
from registry.experiments.repository import IngestRepository
from registry.experiments.router import UNIT_ERASED
from registry.experiments.schemas import EventIn
from registry.lib.changes import Change
from tests.experiments.conftest import Client, flush_and_aggregate, make_experiment, runtime_of

PATIENCE_SECONDS = 10  # a hang guard only


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


def event(unit: str) -> dict[str, str]:
    return {"unit": unit, "metric": "converted", "idempotency_key": unique("c"), "timestamp": now()}


def now() -> str:
    return datetime.now(UTC).isoformat()


async def expose_and_convert(client: Client, headers: dict[str, str], unit: str) -> None:
    response = await client.post(
        "/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": unit}, headers=headers
    )
    assert response.status_code == 200, response.text
    await post_events(client, headers, unit)


async def post_events(client: Client, headers: dict[str, str], unit: str) -> None:
    response = await client.post("/v1/events", json={"events": [event(unit)]}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


def held_event(unit: str) -> EventIn:
    return EventIn(unit=unit, metric="converted", idempotency_key=unique("c"), timestamp=datetime.now(UTC))


async def one_unit_kept(client: Client, headers: dict[str, str], erased: str) -> str:
    """Start 'greet-test' and expose and convert one unit that stays, so the results have something to count; a
    unique id for the unit to erase."""
    await make_experiment(client, headers, "greet-test", "greet")
    await expose_and_convert(client, headers, unique("kept"))
    return unique(erased)


async def erase_while_writing(
    client: Client,
    headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    unit: str,
    write: Callable[[], Awaitable[Any]],
) -> None:
    """Erase ``unit`` after ``write`` inserted its events and before it commits (its transaction still open)."""
    inserted, commit = asyncio.Event(), asyncio.Event()
    insert = IngestRepository.insert_events

    async def insert_then_wait(self: IngestRepository, rows: Sequence[dict[str, Any]]) -> Any:
        keys = await insert(self, rows)
        if any(row["unit"] == unit for row in rows):
            inserted.set()
            await commit.wait()
        return keys

    monkeypatch.setattr(IngestRepository, "insert_events", insert_then_wait)
    writing = asyncio.create_task(write())
    await asyncio.wait_for(inserted.wait(), timeout=PATIENCE_SECONDS)
    await erase(client, headers, unit)
    commit.set()
    await asyncio.wait_for(writing, timeout=PATIENCE_SECONDS)


async def erase(client: Client, headers: dict[str, str], unit: str) -> None:
    response = await client.delete(f"/v1/units/{unit}", headers=headers)
    assert response.status_code == 200, response.text


async def assert_erased(client: Client, headers: dict[str, str], unit: str) -> None:
    """After the flushes and the aggregation, nothing is held on ``unit`` and the results count only the other."""
    await runtime_of(client.app).experiments.events.flush()
    await flush_and_aggregate(client)
    response = await client.get(f"/v1/units/{unit}", headers=headers)
    assert response.status_code == 404, response.text
    results = (await client.get("/v1/experiments/greet-test/results", headers=headers)).json()
    assert results["units"] == 1


async def test_an_event_received_after_the_erasure_is_not_written(client: Client, setup: dict[str, str]) -> None:
    erased = await one_unit_kept(client, setup, "erased")
    await expose_and_convert(client, setup, erased)
    await erase(client, setup, erased)

    await post_events(client, setup, erased)  # the app reports an outcome of a request served before the erasure

    await assert_erased(client, setup, erased)


async def test_a_replica_that_heard_of_an_erasure_elsewhere_writes_no_event_of_the_unit(
    client: Client, setup: dict[str, str]
) -> None:
    erased = await one_unit_kept(client, setup, "erased")
    runtime_of(client.app).bus.deliver(Change("experiment", unit_digest(erased), UNIT_ERASED))  # erased elsewhere

    await post_events(client, setup, erased)

    await assert_erased(client, setup, erased)


async def test_an_event_request_being_written_during_the_erasure_leaves_nothing_of_the_unit(
    client: Client, setup: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    erased = await one_unit_kept(client, setup, "in-flight")

    await erase_while_writing(client, setup, monkeypatch, erased, lambda: post_events(client, setup, erased))

    await assert_erased(client, setup, erased)


async def test_events_held_while_the_database_was_down_are_not_written_after_the_erasure(
    client: Client, setup: dict[str, str]
) -> None:
    erased = await one_unit_kept(client, setup, "held")
    runtime_of(client.app).experiments.events.hold([held_event(erased)], datetime.now(UTC))  # answered 202

    runtime_of(client.app).bus.deliver(Change("experiment", unit_digest(erased), UNIT_ERASED))

    await assert_erased(client, setup, erased)


async def test_a_held_batch_being_written_during_the_erasure_leaves_nothing_of_the_unit(
    client: Client, setup: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    erased = await one_unit_kept(client, setup, "held")
    buffer = runtime_of(client.app).experiments.events
    buffer.hold([held_event(erased)], datetime.now(UTC))

    await erase_while_writing(client, setup, monkeypatch, erased, buffer.flush)

    await assert_erased(client, setup, erased)


async def test_once_no_request_of_the_erasure_can_be_in_flight_the_units_events_are_written_again(
    client: Client, setup: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    unit = unique("back-later")
    monkeypatch.setattr("registry.experiments.privacy_digest.ERASURE_IN_FLIGHT_SECONDS", -60.0)  # long past
    await erase(client, setup, unit)

    await post_events(client, setup, unit)

    response = await client.get(f"/v1/units/{unit}", headers=setup)
    assert [item["metric"] for item in response.json()["events"]] == ["converted"]
