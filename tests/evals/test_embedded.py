"""On the embedded default (SQLite, one process, role all, a pool of one connection) the in-process worker
runs evaluations, their progress streams, and a gate decides a promotion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.completions.conftest import backend
from tests.conftest import AppClient
from tests.embedded import embedded_settings, serve_embedded
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run
from tests.evals.stand_in import StandIn


@pytest.fixture
async def embedded(tmp_path: Path, stand_in: tuple[StandIn, str]) -> AsyncIterator[tuple[AppClient, dict[str, str]]]:
    settings = embedded_settings(
        tmp_path,
        database_pool_timeout=5.0,
        backends={"stand-in": backend(stand_in[1])},
        webhook_dispatch_interval_seconds=3600,
        eval_poll_seconds=0.02,
    )
    assert settings.role == "all"
    async with serve_embedded(settings) as served:
        yield served


async def test_the_embedded_default_runs_evaluations_and_gates_promotions(
    embedded: tuple[AppClient, dict[str, str]],
) -> None:
    client, admin = embedded
    version = await publish(client, admin, "local")
    await dataset(client, admin, "local-cases", answers(*[("y", "y")] * 4, ("n", "y")))
    await ok(
        await client.put(
            "/v1/prompts/local/gates/production",
            json={"dataset": {"name": "local-cases"}, "min_pass_rate": 0.9},
            headers=admin,
        )
    )
    run = await start_run(
        client, admin, prompt="local", version=version, dataset={"name": "local-cases"}, concurrency=3
    )
    events = await client.get(f"/v1/evals/runs/{run['id']}/events", headers=admin)
    assert events.text.rstrip().split("\n\n")[-1].startswith("event: done")
    done = await finished(client, admin, run["id"])
    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 5, 4)
    refused = await client.post(
        "/v1/prompts/local/versions/1/promote", json={"to": "production", "expected_current": None}, headers=admin
    )
    assert refused.status_code == 422
    assert "pass rate 0.80 below the minimum 0.90" in refused.json()["detail"]
    compare = await client.get("/v1/evals/compare", params={"base": run["id"], "candidate": run["id"]}, headers=admin)
    assert compare.json()["paired_items"] == 5
    export = await client.get(
        "/v1/evals/datasets/local-cases/versions/latest/export", params={"format": "csv"}, headers=admin
    )
    assert len(export.text.splitlines()) == 6
