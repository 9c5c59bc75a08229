"""A worker that stops while a completion is under way (process stop, ``Runtime.stop``): what the cancelled
completion spent is recorded as any cancelled completion's, charged to the key, and counted in the run's
cost as discarded; the run resumes on another worker, which asks again and finishes it.

The backend holds the first completion of each model until the registry goes away: before answering at
all (``door``), or after two tokens (``stall-after:2``); later ones answer three tokens. The test waits on
events (the request arrived; the tokens reached the registry), never on time. A completion whose answer
broke off (``reset-after:2``) is charged the same way, as the run waits for the backend and resumes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.completions.service import Run
from registry.completions.upstream import UpstreamStream
from registry.evals.runner import OUTAGE_BACKOFF_SECONDS, EvalWorker, RunCompletions, RunPlan
from registry.runtime import Runtime
from registry.settings import Settings
from tests.completions.conftest import WAIT, backend, serve_in_thread
from tests.completions.fault_server import PROMPT_TOKENS, FaultServer, SeenRequest
from tests.conftest import AppClient, serve_in_process
from tests.evals.conftest import dataset, publish, start_run
from tests.rollouts.simulation import FakeClock

PRICES = (100_000.0, 1_000_000.0)  # per million tokens: 0.1 an input token, 1 an output token


def cost_of(input_tokens: int, output_tokens: int) -> float:
    return input_tokens * PRICES[0] / 1e6 + output_tokens * PRICES[1] / 1e6


class HeldOnce(FaultServer):
    """The fault server, but only the first chat completion of each model misbehaves as its name says (``door``:
    no answer at all until its client goes away); later ones answer ``ok``, so the run can resume."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()  # the first completion reached the backend
        self.gone = threading.Event()  # its client went away

    async def _complete(self, reply: Any, receive: Any, seen: SeenRequest, name: str, arg: str, number: int) -> None:
        if number > 0:
            await super()._complete(reply, receive, seen, "ok", "", number)
            return
        self.arrived.set()
        if name == "door":
            while (await receive())["type"] != "http.disconnect":
                pass
            seen.disconnected = True
        else:
            await super()._complete(reply, receive, seen, name, arg, number)
        if seen.disconnected:
            self.gone.set()


class AnsweringCompletions(RunCompletions):
    """Sets ``answering`` once a completion's first tokens have reached the registry."""

    answering: asyncio.Event

    async def _start(self, run: Run) -> UpstreamStream:
        stream = await super()._start(run)
        self.answering.set()
        return stream


class WatchedWorker(EvalWorker):
    """A worker whose runs' completions tell the test when their tokens start arriving."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answering = asyncio.Event()

    async def _plan(self, run_id: int) -> tuple[RunPlan, str]:
        plan, status = await super()._plan(run_id)
        watched = AnsweringCompletions(self.completions, self.catalog, config=plan.completions.config)
        watched.answering = self.answering
        return dataclasses.replace(plan, completions=watched), status


@pytest.fixture
def backend_server() -> Iterator[HeldOnce]:
    server = HeldOnce()
    with serve_in_thread(server, lifespan="off") as url:
        server.url = url  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def app(settings: Settings, clean_database: AsyncEngine, backend_server: HeldOnce) -> Litestar:
    """The registry on the held backend; its own worker polls too rarely to take part."""
    url: str = backend_server.url  # type: ignore[attr-defined]
    # Timeouts far longer than any test: the held completion ends only when the worker stops.
    slow = {"first_token_timeout": 300.0, "total_timeout": 600.0, "max_retries": 0}
    backends = {"stand-in": backend(url, **slow)}
    return create_app(settings.model_copy(update={"backends": backends, "eval_poll_seconds": 3600.0}))


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AppClient]:
    async with serve_in_process(app) as http:
        yield http


async def usage_records(engine: AsyncEngine, runtime: Runtime) -> list[tuple[str, int, int, float]]:
    await runtime.completions.recorder.flush()
    query = text("SELECT status, input_tokens, output_tokens, cost FROM completions ORDER BY id")
    async with engine.connect() as connection:
        return [(r.status, r.input_tokens, r.output_tokens, float(r.cost)) for r in await connection.execute(query)]


async def run_key(engine: AsyncEngine, run_id: int) -> str:
    query = text("SELECT api_key_id FROM eval_runs WHERE id = :id")
    async with engine.connect() as connection:
        return str((await connection.execute(query, {"id": run_id})).scalar_one())


@pytest.mark.parametrize(
    ("behaviour", "held_tokens"),
    [("stall-after:2", (PROMPT_TOKENS, 2)), ("door", (0, 0))],
    ids=["mid-stream", "before-any-answer"],
)
async def test_a_completion_cancelled_by_a_stopping_worker_is_charged_to_the_run_and_the_key(
    app: Litestar,
    client: AppClient,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    backend_server: HeldOnce,
    behaviour: str,
    held_tokens: tuple[int, int],
) -> None:
    runtime: Runtime = app.state.runtime
    parts = (runtime.settings, runtime.sessionmaker, runtime.completions, runtime.prompts)
    first, second = WatchedWorker(*parts, owner="first"), EvalWorker(*parts, owner="second")
    version = await publish(client, admin, "stopping", model=f"{behaviour}/{uuid.uuid4().hex[:8]}", prices=PRICES)
    await dataset(client, admin, "stopping-cases", [{"variables": {"answer": "a"}, "expected": "a"}])
    run = await start_run(
        client, admin, prompt="stopping", version=version, dataset={"name": "stopping-cases"}, concurrency=1
    )

    assert await first.poll() == [run["id"]]
    async with asyncio.timeout(WAIT):  # fails a test that would hang; never a pause
        if behaviour == "door":
            assert await asyncio.to_thread(backend_server.arrived.wait, WAIT)
        else:
            await first.answering.wait()
    await first.stop()  # what Runtime.stop does to the worker: the completion is cancelled
    assert await asyncio.to_thread(backend_server.gone.wait, WAIT)  # the backend saw the registry go away

    held_cost = cost_of(*held_tokens)
    assert await usage_records(clean_database, runtime) == [("cancelled", *held_tokens, pytest.approx(held_cost))]
    stopped = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert (stopped["status"], stopped["items_done"]) == ("running", 0)
    assert stopped["cost"] == pytest.approx(held_cost)
    assert stopped["discarded"] == {
        "cost": pytest.approx(held_cost),
        "input_tokens": held_tokens[0],
        "output_tokens": held_tokens[1],
    }

    assert await second.poll() == [run["id"]]  # the stopped worker gave the lease up
    await second.active[run["id"]]
    done = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    answer_cost = cost_of(PROMPT_TOKENS, 3)
    assert (done["status"], done["items_done"]) == ("completed", 1)
    records = await usage_records(clean_database, runtime)
    assert [status for status, *_ in records] == ["cancelled", "ok"]
    assert records[1][1:] == (PROMPT_TOKENS, 3, pytest.approx(answer_cost))
    assert done["cost"] == pytest.approx(held_cost + answer_cost) == pytest.approx(sum(r[3] for r in records))
    assert (done["input_tokens"], done["output_tokens"]) == (held_tokens[0] + PROMPT_TOKENS, held_tokens[1] + 3)
    assert done["discarded"] == stopped["discarded"]
    tokens, cost = await runtime.completions.budgets.spend(await run_key(clean_database, run["id"]))
    assert (tokens, cost) == (sum(held_tokens) + PROMPT_TOKENS + 3, pytest.approx(held_cost + answer_cost))
    await second.stop()


async def test_a_completion_that_failed_mid_answer_is_charged_to_the_run_as_discarded(
    app: Litestar, client: AppClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    runtime: Runtime = app.state.runtime
    clock = FakeClock()
    worker = EvalWorker(runtime.settings, runtime.sessionmaker, runtime.completions, runtime.prompts, clock=clock)
    version = await publish(client, admin, "cut", model=f"reset-after:2/{uuid.uuid4().hex[:8]}", prices=PRICES)
    await dataset(client, admin, "cut-cases", [{"variables": {"answer": "a"}, "expected": "a"}])
    run = await start_run(client, admin, prompt="cut", version=version, dataset={"name": "cut-cases"})

    assert await worker.poll() == [run["id"]]
    await worker.active[run["id"]]  # the answer broke off after two tokens: the run waits for the backend
    records = await usage_records(clean_database, runtime)
    assert records == [("error", PROMPT_TOKENS, 2, pytest.approx(cost_of(PROMPT_TOKENS, 2)))]
    clock.advance(OUTAGE_BACKOFF_SECONDS + 1)
    assert await worker.poll() == [run["id"]]
    await worker.active[run["id"]]

    done = (await client.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
    assert (done["status"], done["items_done"]) == ("completed", 1)
    records = await usage_records(clean_database, runtime)
    assert [status for status, *_ in records] == ["error", "ok"]
    assert done["cost"] == pytest.approx(sum(r[3] for r in records))
    assert done["discarded"] == {
        "cost": pytest.approx(cost_of(PROMPT_TOKENS, 2)),
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": 2,
    }
