"""A worker killed (SIGKILL, a crash) after an item's completions were charged to the key and before the item's
outcome was stored: the run's cost still holds what those completions spent, as the key's usage records do.

A killed process runs no clean-up, so the dead worker here is one that stops for good at the point it dies (before
the outcome's write, or with its judge's answer still to come) and is never resumed: nothing it would do after
that point happens. Its lease runs out on a fake clock and another worker takes the run over and finishes it.
Only then is the dead worker's task cancelled, for the test to end. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.evals.models import EvalDatasetItem
from registry.evals.runner import Attempt, EvalWorker, Lease, RunPlan
from registry.runtime import Runtime
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import AppClient
from tests.embedded import serve_on_engine_kind
from tests.evals.conftest import dataset, ok, publish, start_run
from tests.evals.stand_in import StandIn
from tests.rollouts.simulation import FakeClock

LEASE_SECONDS = 600.0  # the workers' own renewals (every third of it) never come during a test
PRICES = (100_000.0, 1_000_000.0)  # per million tokens: 0.1 an input token, 1 an output token
ANSWER_COST = 5 * 0.1 + 1 * 1.0  # the stand-in's usage for a one-word answer: 5 prompt tokens, 1 completion token


class DyingWorker(EvalWorker):
    """A worker that dies at the first item's outcome write: it stops there for good, writing nothing more."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dead = asyncio.Event()

    async def _score_item(self, plan: RunPlan, lease: Lease, item: EvalDatasetItem, attempt: Attempt) -> dict[str, Any]:
        if self.dead.is_set():
            await asyncio.Event().wait()  # a dead process asks nothing more
        return await super()._score_item(plan, lease, item, attempt)

    async def _record(self, lease: Lease, rows: Sequence[dict[str, Any]]) -> None:
        if rows:  # the item's outcome, its completions charged to the key: the process is killed here
            self.dead.set()
            await asyncio.Event().wait()
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
        "completion_usage_flush_seconds": 3600.0,
    }
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, **fields) as client_and_admin:
        yield client_and_admin


async def usage_of_run(runtime: Runtime, run_id: int) -> tuple[int, float, int, int]:
    """The key's usage records of the run: how many, their cost and tokens."""
    await runtime.completions.recorder.flush()
    async with runtime.engine.connect() as connection:
        query = text(
            "SELECT count(*), coalesce(sum(cost), 0), coalesce(sum(input_tokens), 0), "
            "coalesce(sum(output_tokens), 0) FROM completions WHERE request_id = :request"
        )
        count, cost, input_tokens, output_tokens = (
            await connection.execute(query, {"request": f"eval-run-{run_id}"})
        ).one()
    return int(count), float(cost), int(input_tokens), int(output_tokens)


@pytest.mark.parametrize("judged", [False, True], ids=["answer-only", "answer-and-judge"])
async def test_a_worker_killed_before_storing_an_item_leaves_what_its_completions_spent_in_the_runs_cost(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str], judged: bool
) -> None:
    client, admin = served
    runtime: Runtime = client.app.state.runtime
    clock = FakeClock()
    parts = (runtime.settings, runtime.sessionmaker, runtime.completions, runtime.prompts)
    dying = DyingWorker(*parts, owner="dying", clock=clock)
    taking_over = EvalWorker(*parts, owner="taking-over", clock=clock)
    version = await publish(client, admin, "killed", prices=PRICES)
    await dataset(client, admin, "killed-cases", [{"variables": {"answer": a}, "expected": a} for a in "abc"])
    scorers: list[dict[str, Any]] = [{"kind": "exact_match"}]
    completions_per_item = 1
    if judged:  # a priced judge that answers one word: a judged item costs two answers
        judge = await publish(client, admin, "killed-judge", template='{"score":1,"reason":"fine"}', prices=PRICES)
        scorers = [{"kind": "judge", "prompt": "killed-judge", "version": judge}]
        completions_per_item = 2
    run = await start_run(
        client,
        admin,
        prompt="killed",
        version=version,
        dataset={"name": "killed-cases"},
        scorers=scorers,
        concurrency=1,
    )

    assert await dying.poll() == [run["id"]]
    await asyncio.wait_for(dying.dead.wait(), 60)
    clock.advance(LEASE_SECONDS + 1)  # the dead worker's lease runs out
    assert await taking_over.poll() == [run["id"]]
    await asyncio.wait_for(taking_over.active[run["id"]], 60)
    done = await ok(await client.get(f"/v1/evals/runs/{run['id']}", headers=admin))

    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 3, 3)
    assert stand_in[0].asked("a") == 2  # the dead worker's answer to the first item, and the new owner's
    spent = 4 * completions_per_item  # the three stored items' completions and the dead worker's
    records = await usage_of_run(runtime, run["id"])
    assert records == (spent, pytest.approx(spent * ANSWER_COST), spent * 5, spent * 1)
    assert done["cost"] == pytest.approx(records[1])
    assert (done["input_tokens"], done["output_tokens"]) == (records[2], records[3])
    assert done["discarded"]["cost"] == pytest.approx(completions_per_item * ANSWER_COST)

    # The test ends the dead worker's task: what it spent was charged already, so nothing more is.
    dead = dying.active[run["id"]]
    dead.cancel()
    await asyncio.gather(dead, return_exceptions=True)
    after = await ok(await client.get(f"/v1/evals/runs/{run['id']}", headers=admin))
    assert after["cost"] == pytest.approx(done["cost"])
