"""Exposures of requests in flight during a unit's erasure: none is written after it, on any replica."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from registry.experiments.exposures import ExposureBuffer
from registry.experiments.privacy_digest import unit_digest
from registry.experiments.repository import ExposureRow, IngestRepository
from tests.experiments.conftest import Client, flush_and_aggregate, make_experiment, runtime_of

PATIENCE_SECONDS = 10  # a hang guard only


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


async def render(client: Client, headers: dict[str, str], unit: str) -> None:
    body = {"variables": {"x": "a"}, "unit": unit}
    response = await client.post("/v1/prompts/greet/render", json=body, headers=headers)
    assert response.status_code == 200, response.text


async def erase(client: Client, headers: dict[str, str], unit: str) -> None:
    response = await client.delete(f"/v1/units/{unit}", headers=headers)
    assert response.status_code == 200, response.text


async def assert_erased(client: Client, headers: dict[str, str], unit: str, *, units_left: int) -> None:
    """After the flush and the aggregation, nothing is held on ``unit`` and the results count only the others."""
    await flush_and_aggregate(client)
    response = await client.get(f"/v1/units/{unit}", headers=headers)
    assert response.status_code == 404, response.text
    results = (await client.get("/v1/experiments/greet-test/results", headers=headers)).json()
    assert results["units"] == units_left


async def running_experiment(client: Client, headers: dict[str, str]) -> int:
    """Start 'greet-test' on 'greet'; its id, as replicas buffer exposures under it."""
    await make_experiment(client, headers, "greet-test", "greet")
    experiment = runtime_of(client.app).experiments.router.running("greet-test")
    assert experiment is not None
    return experiment.id


async def test_an_exposure_routed_before_the_erasure_and_buffered_after_it_is_never_written(
    client: Client, setup: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    kept, erased = unique("kept"), unique("in-flight")
    await render(client, setup, kept)
    buffer = runtime_of(client.app).experiments.exposures
    routed: list[tuple[int, int, str, str]] = []
    with monkeypatch.context() as patch:  # the render routes the unit; its exposure is not buffered yet
        patch.setattr(buffer, "record", lambda *exposure: routed.append(exposure))
        await render(client, setup, erased)
    assert [exposure[2] for exposure in routed] == [erased]

    await erase(client, setup, erased)
    buffer.record(*routed[0])  # the request that routed it before the erasure buffers its exposure now

    await assert_erased(client, setup, erased, units_left=1)


async def test_a_replica_that_heard_of_the_erasure_writes_no_exposure_of_the_unit_recorded_after_it(
    client: Client, setup: dict[str, str]
) -> None:
    experiment = await running_experiment(client, setup)
    kept, erased = unique("kept"), unique("in-flight")
    await render(client, setup, kept)
    replica = ExposureBuffer(runtime_of(client.app).sessionmaker, max_pending=100)
    await erase(client, setup, erased)
    replica.forget_unit(unit_digest(erased))  # the erasure's change reaches the other replica
    replica.record(experiment, 1, erased, "control")  # a request it was serving routes the unit now

    assert await replica.flush() == 0
    await assert_erased(client, setup, erased, units_left=1)


async def test_a_batch_being_written_on_another_replica_during_the_erasure_leaves_nothing_of_the_unit(
    client: Client, setup: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = await running_experiment(client, setup)
    kept, erased = unique("kept"), unique("in-flight")
    await render(client, setup, kept)
    inserted, commit = asyncio.Event(), asyncio.Event()
    insert = IngestRepository.insert_exposures_and_queue_units

    async def insert_then_wait(self: IngestRepository, rows: Sequence[ExposureRow]) -> Any:
        await insert(self, rows)
        if any(row[2] == erased for row in rows):  # the other replica's batch: inserted, not yet committed
            inserted.set()
            await commit.wait()

    monkeypatch.setattr(IngestRepository, "insert_exposures_and_queue_units", insert_then_wait)
    replica = ExposureBuffer(runtime_of(client.app).sessionmaker, max_pending=100)
    replica.record(experiment, 1, erased, "control")
    writing = asyncio.create_task(replica.flush())
    await asyncio.wait_for(inserted.wait(), timeout=PATIENCE_SECONDS)

    await erase(client, setup, erased)  # commits while the other replica's batch is still being written
    replica.forget_unit(unit_digest(erased))  # then the change reaches that replica
    commit.set()
    await asyncio.wait_for(writing, timeout=PATIENCE_SECONDS)

    await assert_erased(client, setup, erased, units_left=1)


async def test_once_no_request_of_the_erasure_can_be_in_flight_the_unit_is_recorded_again_and_the_erasure_forgotten(
    client: Client, setup: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = await running_experiment(client, setup)
    unit = unique("back-later")
    replica = ExposureBuffer(runtime_of(client.app).sessionmaker, max_pending=100)
    monkeypatch.setattr("registry.experiments.privacy_digest.ERASURE_IN_FLIGHT_SECONDS", -60.0)  # long past when heard
    replica.forget_unit(unit_digest(unit))
    replica.record(experiment, 1, unit, "control")

    assert await replica.flush() == 1
    assert not replica._erased  # what it keeps is bounded by the erasures of the last window
    await flush_and_aggregate(client)
    response = await client.get(f"/v1/units/{unit}", headers=setup)
    assert [exposure["experiment"] for exposure in response.json()["exposures"]] == ["greet-test"]
