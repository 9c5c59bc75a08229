"""A run stops spending as soon as it may no longer: a cancel stops the items under way before their next
completion (not at their next write), a run whose key was revoked is cancelled saying so at its next item and never
resumed, and a backend that asks the run to wait (a 429's Retry-After) is left alone that long.

Workers stop at a known point of an item (``HeldWorker``) and share a fake clock; the stand-in counts the
completions. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import AppClient
from tests.evals.conftest import answers, dataset, ok, publish, start_run
from tests.evals.stand_in import StandIn
from tests.evals.test_discarded_while_running import held_worker, read, served, three_item_run
from tests.rollouts.simulation import FakeClock

__all__ = ["served"]  # the fixture, used by the tests below

VERDICT = '{"score": 1, "reason": "fine"}'


def judged(stand_in: StandIn) -> int:
    return sum(1 for r in stand_in.completions() if r["messages"][-1]["content"] == VERDICT)


async def test_a_cancel_stops_an_item_under_way_before_its_judge_is_asked(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    judge = await publish(client, admin, "prompt-judge", template=VERDICT)
    worker = held_worker(client, "only", FakeClock(), position=1, at="judge")
    scorers: list[dict[str, Any]] = [{"kind": "judge", "prompt": "prompt-judge", "version": judge}]
    run_id = await three_item_run(client, admin, concurrency=1, scorers=scorers)
    assert await worker.poll() == [run_id]
    await asyncio.wait_for(worker.held.wait(), 60)  # the first item answered, its judge not asked yet
    asked = len(stand_in[0].requests)

    await ok(await client.post(f"/v1/evals/runs/{run_id}/cancel", headers=admin))
    worker.go_on.set()
    await asyncio.wait_for(worker.active[run_id], 60)

    assert len(stand_in[0].requests) == asked  # no completion after the cancel: the judge was not asked
    assert judged(stand_in[0]) == 0
    cancelled = await read(client, admin, run_id)
    assert (cancelled["status"], cancelled["items_done"]) == ("cancelled", 0)


async def revocable_key(client: AppClient, admin: dict[str, str]) -> tuple[str, dict[str, str]]:
    created = await ok(
        await client.post("/v1/keys", json={"name": "runner", "scopes": ["read", "write"]}, headers=admin)
    )
    return created["api_key"]["id"], {"Authorization": f"Bearer {created['key']}"}


async def test_a_run_whose_key_is_revoked_is_cancelled_at_its_next_item_saying_why(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    key_id, runner = await revocable_key(client, admin)
    version = await publish(client, admin, "revoked")
    await dataset(client, admin, "revoked-cases", answers(("a", "a"), ("b", "b"), ("c", "c")))
    worker = held_worker(client, "only", FakeClock(), position=1)  # the first item answered, not yet stored
    run = await start_run(
        client, runner, prompt="revoked", version=version, dataset={"name": "revoked-cases"}, concurrency=1
    )
    assert await worker.poll() == [run["id"]]
    await asyncio.wait_for(worker.held.wait(), 60)

    await ok(await client.delete(f"/v1/keys/{key_id}", headers=admin))
    worker.go_on.set()
    await asyncio.wait_for(worker.active[run["id"]], 60)

    assert [r["messages"][-1]["content"] for r in stand_in[0].requests] == ["a"]  # nothing asked after item 1
    ended = await read(client, admin, run["id"])
    assert (ended["status"], ended["items_done"]) == ("cancelled", 1)
    assert ended["error"] == "cancelled: the API key that started the run was revoked"
    assert await held_worker(client, "another", FakeClock(), position=0).poll() == []  # not resumed


async def test_a_run_whose_key_was_revoked_before_a_worker_took_it_asks_nothing(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    key_id, runner = await revocable_key(client, admin)
    version = await publish(client, admin, "orphaned")
    await dataset(client, admin, "orphaned-cases", answers(("a", "a")))
    run = await start_run(client, runner, prompt="orphaned", version=version, dataset={"name": "orphaned-cases"})
    await ok(await client.delete(f"/v1/keys/{key_id}", headers=admin))

    worker = held_worker(client, "only", FakeClock(), position=0)
    assert await worker.poll() == [run["id"]]
    await asyncio.wait_for(worker.active[run["id"]], 60)

    assert stand_in[0].requests == []
    ended = await read(client, admin, run["id"])
    assert (ended["status"], ended["items_done"], ended["error"]) == (
        "cancelled",
        0,
        "cancelled: the API key that started the run was revoked",
    )


async def test_a_throttled_backends_retry_after_keeps_the_run_waiting_that_long(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    clock = FakeClock()
    version = await publish(client, admin, "throttled", model="throttled")
    await dataset(client, admin, "throttled-cases", answers(("a", "a")))
    run = await start_run(client, admin, prompt="throttled", version=version, dataset={"name": "throttled-cases"})
    worker = held_worker(client, "only", clock, position=0)
    assert await worker.poll() == [run["id"]]
    await asyncio.wait_for(worker.active[run["id"]], 60)
    assert (await read(client, admin, run["id"]))["error"].startswith("waiting for the backend")
    assert len(stand_in[0].requests) == 1

    clock.advance(60)  # past the default outage backoff, within the backend's Retry-After (120 s)
    assert await worker.poll() == []
    clock.advance(61)
    assert await worker.poll() == [run["id"]]
    await asyncio.wait_for(worker.active[run["id"]], 60)
    assert len(stand_in[0].requests) == 2
