"""A worker that stalls past its lease while another takes its run over: one outcome per item, every
attempt's cost in the run's cost, and the stalled worker asks the backend nothing once it knows.

Two workers share a fake clock, so a lease runs out when the test moves the clock, never while the
test waits. The first worker stops at a known point of its first item (an ``asyncio.Event``), the
second takes the run over and finishes it, then the first goes on. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.evals.models import EvalDatasetItem
from registry.evals.runner import OUTAGE_BACKOFF_SECONDS, Attempt, EvalWorker, Lease, RunPlan
from registry.runtime import Runtime
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import AppClient, count_rows
from tests.embedded import serve_on_engine_kind
from tests.evals.conftest import dataset, ok, publish, start_run
from tests.evals.stand_in import StandIn
from tests.rollouts.simulation import FakeClock

LEASE_SECONDS = 600.0  # the workers' own renewals (every third of it) never come during a test
ANSWERS = ("a", "b", "c")
Pause = Literal["before_the_backend", "before_the_write"]


class PausingWorker(EvalWorker):
    """A worker that stops at ``pause`` of the item at ``position`` until the test sets ``go_on``."""

    def __init__(self, *args: Any, pause: Pause, position: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pause = pause
        self.position = position
        self.paused = asyncio.Event()
        self.go_on = asyncio.Event()

    async def _stop_once(self, pause: Pause, position: int) -> None:
        if (pause, position) == (self.pause, self.position) and not self.paused.is_set():
            self.paused.set()
            await self.go_on.wait()

    async def _score_item(self, plan: RunPlan, lease: Lease, item: EvalDatasetItem, attempt: Attempt) -> dict[str, Any]:
        await self._stop_once("before_the_backend", item.position)
        return await super()._score_item(plan, lease, item, attempt)

    async def _record(self, lease: Lease, rows: Any) -> None:
        if rows:
            await self._stop_once("before_the_write", rows[0]["position"])
        await super()._record(lease, rows)


@pytest.fixture
async def served(
    migrated_engine: AsyncEngine, settings: Settings, tmp_path: Path, stand_in: tuple[StandIn, str]
) -> AsyncIterator[tuple[AppClient, dict[str, str]]]:
    """The registry on the test's database; its own worker polls too rarely to take part."""
    server, url = stand_in
    server.requests.clear()
    server.released.clear()
    server.up.clear()
    fields: dict[str, Any] = {
        "backends": {"stand-in": backend(url, max_retries=0, breaker_cooldown=0.05)},
        "eval_poll_seconds": 3600.0,
        "eval_lease_seconds": LEASE_SECONDS,
    }
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, **fields) as client_and_admin:
        yield client_and_admin


def workers(app: Litestar, pause: Pause, second_owner: str) -> tuple[PausingWorker, PausingWorker, FakeClock]:
    """The first worker stops at ``pause`` of the first item; the second, once it has stored the first
    item, stops before asking for the second, so that the first goes on while the second owns the run."""
    runtime: Runtime = app.state.runtime
    clock = FakeClock()
    parts = (runtime.settings, runtime.sessionmaker, runtime.completions, runtime.prompts)
    first = PausingWorker(*parts, owner="first", clock=clock, pause=pause, position=1)
    second = PausingWorker(*parts, owner=second_owner, clock=clock, pause="before_the_backend", position=2)
    return first, second, clock


async def three_item_run(client: AppClient, admin: dict[str, str], **fields: Any) -> dict[str, Any]:
    """A run, one item at a time, of three items that pass, on a priced config (each answer costs the same)."""
    version = await publish(client, admin, "stale", prices=(100_000.0, 1_000_000.0))
    await dataset(client, admin, "stale-cases", [{"variables": {"answer": a}, "expected": a} for a in ANSWERS])
    return await start_run(
        client, admin, prompt="stale", version=version, dataset={"name": "stale-cases"}, concurrency=1, **fields
    )


async def taken_over(
    client: AppClient, admin: dict[str, str], first: PausingWorker, second: PausingWorker, clock: FakeClock
) -> dict[str, Any]:
    """A run of three items that the first worker takes and stalls in and the second takes over; the first
    goes on and ends, then the second finishes the run. Returns the run as it is once both are done."""
    run = await three_item_run(client, admin)
    assert await first.poll() == [run["id"]]
    await first.paused.wait()
    assert await second.poll() == []  # the first worker's lease still holds
    clock.advance(LEASE_SECONDS + 1)  # the first worker stalled past its lease
    assert await second.poll() == [run["id"]]
    await second.paused.wait()
    first.go_on.set()
    await first.active[run["id"]]
    second.go_on.set()
    await second.active[run["id"]]
    body: dict[str, Any] = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert body["status"] == "completed"
    return body


async def stored_costs(client: AppClient, admin: dict[str, str], run_id: int) -> list[tuple[int, float]]:
    items = (await client.get(f"/v1/evals/runs/{run_id}/items", headers=admin)).json()["items"]
    return [(item["position"], item["cost"]) for item in items]


@pytest.mark.parametrize("second_owner", ["second", "first"], ids=["another-worker", "the-same-worker-restarted"])
async def test_a_stalled_workers_outcome_is_refused_and_its_cost_is_the_runs(
    served: tuple[AppClient, dict[str, str]],
    migrated_engine: AsyncEngine,
    stand_in: tuple[StandIn, str],
    second_owner: str,
) -> None:
    client, admin = served
    first, second, clock = workers(client.app, "before_the_write", second_owner)
    run = await taken_over(client, admin, first, second, clock)

    assert [stand_in[0].asked(a) for a in ANSWERS] == [2, 1, 1]  # the first item's completion truly ran twice
    costs = await stored_costs(client, admin, run["id"])
    assert [position for position, _ in costs] == [1, 2, 3]  # one outcome per item
    item_cost = costs[0][1]
    assert item_cost > 0
    assert all(cost == pytest.approx(item_cost) for _, cost in costs)
    assert (run["items_done"], run["items_passed"], run["pass_rate"]) == (3, 3, 1.0)  # scores counted once
    assert run["cost"] == pytest.approx(4 * item_cost)  # three stored outcomes and the refused one
    assert (run["input_tokens"], run["output_tokens"]) == (4 * 5, 4 * 1)
    assert run["discarded"] == {"cost": pytest.approx(item_cost), "input_tokens": 5, "output_tokens": 1}
    assert await count_rows(migrated_engine, "eval_run_items") == 3


async def test_a_stalled_worker_that_was_taken_over_asks_the_backend_nothing(
    served: tuple[AppClient, dict[str, str]], migrated_engine: AsyncEngine, stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    first, second, clock = workers(client.app, "before_the_backend", "second")
    run = await taken_over(client, admin, first, second, clock)

    assert [stand_in[0].asked(a) for a in ANSWERS] == [1, 1, 1]  # only the new owner asked
    costs = await stored_costs(client, admin, run["id"])
    assert [position for position, _ in costs] == [1, 2, 3]
    assert run["cost"] == pytest.approx(sum(cost for _, cost in costs))  # nothing was discarded
    assert run["discarded"] == {"cost": 0.0, "input_tokens": 0, "output_tokens": 0}
    assert await count_rows(migrated_engine, "eval_run_items") == 3


async def test_a_completion_under_way_when_its_run_is_cancelled_is_charged_to_the_run_and_not_stored(
    served: tuple[AppClient, dict[str, str]], migrated_engine: AsyncEngine, stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    first, _, _ = workers(client.app, "before_the_write", "second")
    run = await three_item_run(client, admin)
    assert await first.poll() == [run["id"]]
    await first.paused.wait()
    cancelled = await client.post(f"/v1/evals/runs/{run['id']}/cancel", headers=admin)
    assert cancelled.status_code == 200, cancelled.text
    first.go_on.set()
    await first.active[run["id"]]

    body = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert [stand_in[0].asked(a) for a in ANSWERS] == [1, 0, 0]
    assert (body["status"], body["items_done"]) == ("cancelled", 0)
    assert await count_rows(migrated_engine, "eval_run_items") == 0
    assert body["cost"] > 0
    assert body["discarded"] == {"cost": pytest.approx(body["cost"]), "input_tokens": 5, "output_tokens": 1}


async def test_an_item_whose_judge_met_an_outage_is_asked_again_and_both_answers_are_charged(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    runtime: Runtime = client.app.state.runtime
    clock = FakeClock()
    worker = EvalWorker(runtime.settings, runtime.sessionmaker, runtime.completions, runtime.prompts, clock=clock)
    await publish(client, admin, "grader", template='{"score": 1, "reason": "fine"}', model="down-then-echo")
    await ok(
        await client.post(
            "/v1/prompts/grader/versions/1/promote", json={"to": "production", "expected_current": None}, headers=admin
        )
    )
    run = await three_item_run(client, admin, scorers=[{"kind": "judge", "prompt": "grader"}])
    assert await worker.poll() == [run["id"]]
    await worker.active[run["id"]]  # the first item's answer came, its judge's did not: the run waits
    stand_in[0].up.set()
    clock.advance(OUTAGE_BACKOFF_SECONDS + 1)
    assert await worker.poll() == [run["id"]]
    await worker.active[run["id"]]

    body = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert (body["status"], body["items_done"], body["items_passed"]) == ("completed", 3, 3)
    assert [stand_in[0].asked(a) for a in ANSWERS] == [2, 1, 1]
    costs = await stored_costs(client, admin, run["id"])
    item_cost = costs[0][1]  # the judge's config is free: an item costs its answer
    assert item_cost > 0
    assert body["cost"] == pytest.approx(4 * item_cost)
    assert body["discarded"] == {"cost": pytest.approx(item_cost), "input_tokens": 5, "output_tokens": 1}
