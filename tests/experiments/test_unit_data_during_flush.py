"""A unit's data read while its exposure is being written shows it once: not in both the process's pending
exposures and the database, nor in neither (the batch taken out of the buffer, not yet committed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from registry.experiments.exposures import ExposureBuffer
from registry.runtime import Runtime
from tests.experiments.conftest import Client, make_experiment


async def test_a_units_exposure_being_written_is_shown_once(
    client: Client, setup: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime: Runtime = client.app.state.runtime
    await make_experiment(client, setup, "greet-test", "greet")
    rendered = await client.post(
        "/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": "alice"}, headers=setup
    )
    assert rendered.json()["experiment"] is not None
    writing, release = asyncio.Event(), asyncio.Event()
    write = ExposureBuffer._write

    async def held(buffer: ExposureBuffer, rows: Any) -> None:
        writing.set()
        await release.wait()
        await write(buffer, rows)

    monkeypatch.setattr(ExposureBuffer, "_write", held)
    flushing = asyncio.create_task(runtime.experiments.exposures.flush())
    await writing.wait()  # the batch is out of the buffer, not yet in the database
    reading = asyncio.create_task(client.get("/v1/units/alice", headers=setup))
    for _ in range(20):
        await asyncio.sleep(0)
    release.set()
    assert await flushing == 1
    shown = await reading

    assert shown.status_code == 200, shown.text
    data = shown.json()
    assert len(data["exposures"]) + data["pending_exposures"] == 1
