"""A running run's discarded spend counts only attempts given up, never items still under way.

Each completion is added to the run's cost as it ends, before its item's outcome is stored; an analyst who reads
the run in between must not see that item's spend as discarded. Workers stop at a known point of an item (an
``asyncio.Event``: its answer charged, its outcome not yet written) while the test reads the run; two workers
share a fake clock, so a lease runs out only when the test moves it. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.schemas import CompletionOut
from registry.evals.models import EvalDatasetItem
from registry.evals.runner import Attempt, EvalWorker, JudgeSetup, Lease, RunPlan
from registry.evals.scorers import Score
from registry.runtime import Runtime
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import AppClient
from tests.embedded import serve_on_engine_kind
from tests.evals.conftest import dataset, ok, publish, start_run
from tests.evals.stand_in import StandIn
from tests.rollouts.simulation import FakeClock
from tests.waiting import eventually_async

LEASE_SECONDS = 600.0  # the workers' own renewals (every third of it) never come during a test
PRICES = (100_000.0, 1_000_000.0)  # per million tokens: 0.1 an input token, 1 an output token
ANSWER_COST = 5 * 0.1 + 1 * 1.0  # the stand-in's usage for a one-word answer: 5 prompt tokens, 1 completion token
NOTHING = {"cost": 0.0, "input_tokens": 0, "output_tokens": 0}


class HeldWorker(EvalWorker):
    """A worker that stops at ``position`` until ``go_on``, its answer charged: before writing the outcome, or
    before asking the judge (``at``)."""

    def __init__(self, *args: Any, position: int, at: Literal["write", "judge"] = "write", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self.at = at
        self.held = asyncio.Event()
        self.go_on = asyncio.Event()

    async def _hold_once(self, at: str, position: int) -> None:
        if (at, position) == (self.at, self.position) and not self.held.is_set():
            self.held.set()
            await self.go_on.wait()

    async def _record(self, lease: Lease, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await self._hold_once("write", rows[0]["position"])
        await super()._record(lease, rows)

    async def _judge(
        self,
        setup: JudgeSetup,
        plan: RunPlan,
        lease: Lease,
        item: EvalDatasetItem,
        out: CompletionOut,
        attempt: Attempt,
    ) -> tuple[Score, dict[str, Any], str | None]:
        await self._hold_once("judge", item.position)
        return await super()._judge(setup, plan, lease, item, out, attempt)


@pytest.fixture
async def served(
    migrated_engine: AsyncEngine, settings: Settings, tmp_path: Path, stand_in: tuple[StandIn, str]
) -> AsyncIterator[tuple[AppClient, dict[str, str]]]:
    """The registry on the test's database; its own worker polls too rarely to take part."""
    server, url = stand_in
    server.requests.clear()
    server.up.clear()
    fields: dict[str, Any] = {
        "backends": {"stand-in": backend(url, max_retries=0, breaker_cooldown=0.05)},
        "eval_poll_seconds": 3600.0,
        "eval_lease_seconds": LEASE_SECONDS,
    }
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, **fields) as client_and_admin:
        yield client_and_admin


def held_worker(
    client: AppClient, owner: str, clock: FakeClock, position: int, at: Literal["write", "judge"] = "write"
) -> HeldWorker:
    runtime: Runtime = client.app.state.runtime
    parts = (runtime.settings, runtime.sessionmaker, runtime.completions, runtime.prompts)
    return HeldWorker(*parts, owner=owner, clock=clock, position=position, at=at)


async def three_item_run(
    client: AppClient, admin: dict[str, str], *, concurrency: int, scorers: list[dict[str, Any]] | None = None
) -> int:
    version = await publish(client, admin, "midway", prices=PRICES)
    await dataset(client, admin, "midway-cases", [{"variables": {"answer": a}, "expected": a} for a in "abc"])
    run = await start_run(
        client,
        admin,
        prompt="midway",
        version=version,
        dataset={"name": "midway-cases"},
        concurrency=concurrency,
        scorers=scorers or [{"kind": "exact_match"}],
    )
    run_id: int = run["id"]
    return run_id


async def read(client: AppClient, admin: dict[str, str], run_id: int) -> dict[str, Any]:
    return await ok(await client.get(f"/v1/evals/runs/{run_id}", headers=admin))


async def test_an_item_answered_and_not_yet_stored_is_not_discarded_while_the_run_works(
    served: tuple[AppClient, dict[str, str]],
) -> None:
    client, admin = served
    worker = held_worker(client, "only", FakeClock(), position=2)
    run_id = await three_item_run(client, admin, concurrency=1)
    assert await worker.poll() == [run_id]
    await asyncio.wait_for(worker.held.wait(), 60)

    midway = await read(client, admin, run_id)
    assert (midway["status"], midway["items_done"]) == ("running", 1)
    assert midway["cost"] == pytest.approx(2 * ANSWER_COST)  # the stored first item and the held second one
    assert (midway["input_tokens"], midway["output_tokens"]) == (2 * 5, 2 * 1)
    assert midway["discarded"] == NOTHING

    worker.go_on.set()
    await asyncio.wait_for(worker.active[run_id], 60)
    done = await read(client, admin, run_id)
    assert (done["status"], done["items_done"], done["cost"]) == ("completed", 3, pytest.approx(3 * ANSWER_COST))
    assert done["discarded"] == NOTHING


async def test_a_taken_over_attempt_is_discarded_and_the_new_owners_item_under_way_is_not(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    clock = FakeClock()
    first = held_worker(client, "first", clock, position=1)
    second = held_worker(client, "second", clock, position=1)
    run_id = await three_item_run(client, admin, concurrency=1)
    assert await first.poll() == [run_id]
    await asyncio.wait_for(first.held.wait(), 60)
    assert (await read(client, admin, run_id))["discarded"] == NOTHING  # the first worker's item is under way

    clock.advance(LEASE_SECONDS + 1)  # the first worker stalled past its lease: its outcome can no longer be stored
    assert await second.poll() == [run_id]
    await asyncio.wait_for(second.held.wait(), 60)
    midway = await read(client, admin, run_id)
    assert stand_in[0].asked("a") == 2
    assert (midway["status"], midway["items_done"]) == ("running", 0)
    assert midway["cost"] == pytest.approx(2 * ANSWER_COST)
    assert midway["discarded"] == {"cost": pytest.approx(ANSWER_COST), "input_tokens": 5, "output_tokens": 1}

    first.go_on.set()  # its outcome is refused: it was counted as discarded already, and is not counted twice
    await asyncio.wait_for(first.active[run_id], 60)
    assert (await read(client, admin, run_id))["discarded"] == midway["discarded"]
    second.go_on.set()
    await asyncio.wait_for(second.active[run_id], 60)
    done = await read(client, admin, run_id)
    assert (done["status"], done["items_done"], done["cost"]) == ("completed", 3, pytest.approx(4 * ANSWER_COST))
    assert done["discarded"] == midway["discarded"]


async def test_an_attempt_given_up_is_discarded_at_once_while_another_item_is_still_under_way(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    """Two items at a time, judged by a judge whose backend is down: the first item's judge fails, so its attempt
    is given up (its answer asked again when the run resumes), while the second item, its answer charged, waits
    before asking its judge. The first answer is discarded from then on, the second is not."""
    client, admin = served
    judge = await publish(client, admin, "midway-judge", template='{"score": 1, "reason": "fine"}', model="down")
    worker = held_worker(client, "only", FakeClock(), position=2, at="judge")
    scorers: list[dict[str, Any]] = [{"kind": "judge", "prompt": "midway-judge", "version": judge}]
    run_id = await three_item_run(client, admin, concurrency=2, scorers=scorers)
    assert await worker.poll() == [run_id]
    await asyncio.wait_for(worker.held.wait(), 60)

    async def first_given_up() -> bool:
        return bool((await read(client, admin, run_id))["discarded"]["input_tokens"])

    await eventually_async(first_given_up, "the first item's attempt given up")
    midway = await read(client, admin, run_id)
    assert len(stand_in[0].completions("down")) == 1  # only the first item's judge was asked
    assert (midway["status"], midway["items_done"]) == ("running", 0)
    assert midway["cost"] == pytest.approx(2 * ANSWER_COST)
    assert midway["discarded"] == {"cost": pytest.approx(ANSWER_COST), "input_tokens": 5, "output_tokens": 1}

    worker.go_on.set()  # the second item's judge fails too: the run waits for the backend, both answers discarded
    await asyncio.wait_for(worker.active[run_id], 60)
    waiting = await read(client, admin, run_id)
    assert (waiting["status"], waiting["items_done"]) == ("running", 0)
    assert waiting["error"].startswith("waiting for the backend")
    assert waiting["discarded"] == {"cost": pytest.approx(2 * ANSWER_COST), "input_tokens": 10, "output_tokens": 2}
