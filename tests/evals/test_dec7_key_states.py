"""A run stops as soon as the key that started it (and pays for it) is no longer usable, whichever way: expired (by
the worker's clock) or deleted, as a revoked one does: cancelled at once saying which, nothing more asked, never
resumed. Keys cannot be deleted through the API (``DELETE /v1/keys/{id}`` revokes), so the deleted key's row is
removed in SQL, as an operator would.

Workers stop at a known point of an item (``HeldWorker``) and share a fake clock; the stand-in counts the
completions. On PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import AppClient
from tests.evals.conftest import answers, dataset, ok, publish, start_run
from tests.evals.stand_in import StandIn
from tests.evals.test_discarded_while_running import held_worker, read, served
from tests.rollouts.simulation import FakeClock

__all__ = ["served"]  # the fixture, used by the tests below

HOUR = 3600.0


async def expiring_key(client: AppClient, admin: dict[str, str], expires_at: datetime) -> tuple[str, dict[str, str]]:
    body = {"name": "runner", "scopes": ["read", "write"], "expires_at": expires_at.isoformat()}
    created = await ok(await client.post("/v1/keys", json=body, headers=admin))
    return created["api_key"]["id"], {"Authorization": f"Bearer {created['key']}"}


async def three_answers_run(client: AppClient, admin: dict[str, str], runner: dict[str, str]) -> dict[str, Any]:
    version = await publish(client, admin, "keyed")
    await dataset(client, admin, "keyed-cases", answers(("a", "a"), ("b", "b"), ("c", "c")))
    return await start_run(
        client, runner, prompt="keyed", version=version, dataset={"name": "keyed-cases"}, concurrency=1
    )


def asked(stand_in: StandIn) -> list[str]:
    return [r["messages"][-1]["content"] for r in stand_in.requests]


async def test_a_run_whose_key_expires_mid_run_is_cancelled_at_its_next_item_saying_so(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    clock = FakeClock()
    expires = (clock() + timedelta(seconds=HOUR)).replace(microsecond=0)
    _, runner = await expiring_key(client, admin, expires)
    run = await three_answers_run(client, admin, runner)  # the key is good when the run starts
    worker = held_worker(client, "only", clock, position=1)  # the first item answered, not yet stored
    assert await worker.poll() == [run["id"]]
    await asyncio.wait_for(worker.held.wait(), 60)

    clock.advance(2 * HOUR)  # the key expires while the run works
    worker.go_on.set()
    await asyncio.wait_for(worker.active[run["id"]], 60)

    assert asked(stand_in[0]) == ["a"]  # nothing asked, so nothing charged, after the key expired
    ended = await read(client, admin, run["id"])
    assert (ended["status"], ended["items_done"], ended["input_tokens"]) == ("cancelled", 1, 5)
    assert ended["error"] == f"cancelled: the API key that started the run expired at {expires.isoformat()}"
    assert await held_worker(client, "another", clock, position=0).poll() == []  # not resumed


async def test_a_run_whose_key_expired_before_a_worker_took_it_asks_nothing(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    clock = FakeClock()
    expires = (clock() + timedelta(seconds=HOUR)).replace(microsecond=0)
    _, runner = await expiring_key(client, admin, expires)
    run = await three_answers_run(client, admin, runner)
    clock.advance(2 * HOUR)

    worker = held_worker(client, "only", clock, position=0)
    assert await worker.poll() == [run["id"]]
    await asyncio.wait_for(worker.active[run["id"]], 60)

    assert stand_in[0].requests == []
    ended = await read(client, admin, run["id"])
    assert (ended["status"], ended["items_done"], ended["cost"]) == ("cancelled", 0, 0.0)
    assert ended["error"] == f"cancelled: the API key that started the run expired at {expires.isoformat()}"


async def test_a_run_whose_key_was_deleted_mid_run_is_cancelled_at_its_next_item_saying_so(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str], migrated_engine: AsyncEngine
) -> None:
    client, admin = served
    clock = FakeClock()
    key_id, runner = await expiring_key(client, admin, clock() + timedelta(days=30))
    run = await three_answers_run(client, admin, runner)
    worker = held_worker(client, "only", clock, position=1)
    assert await worker.poll() == [run["id"]]
    await asyncio.wait_for(worker.held.wait(), 60)

    async with migrated_engine.begin() as connection:
        await connection.execute(text("DELETE FROM api_keys WHERE public_id = :id"), {"id": key_id})
    worker.go_on.set()
    await asyncio.wait_for(worker.active[run["id"]], 60)

    assert asked(stand_in[0]) == ["a"]
    ended = await read(client, admin, run["id"])
    assert (ended["status"], ended["items_done"]) == ("cancelled", 1)
    assert ended["error"] == "cancelled: the API key that started the run was deleted"
    assert await held_worker(client, "another", clock, position=0).poll() == []


async def test_a_run_whose_key_is_still_good_runs_to_the_end(
    served: tuple[AppClient, dict[str, str]], stand_in: tuple[StandIn, str]
) -> None:
    client, admin = served
    clock = FakeClock()
    _, runner = await expiring_key(client, admin, clock() + timedelta(seconds=HOUR))
    run = await three_answers_run(client, admin, runner)
    worker = held_worker(client, "only", clock, position=0)
    clock.advance(HOUR - 1)  # just before it expires
    assert await worker.poll() == [run["id"]]
    await asyncio.wait_for(worker.active[run["id"]], 60)

    assert asked(stand_in[0]) == ["a", "b", "c"]
    ended = await read(client, admin, run["id"])
    assert (ended["status"], ended["items_done"], ended["error"]) == ("completed", 3, None)
