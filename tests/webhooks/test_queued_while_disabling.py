"""A ping, a redelivery or an event fanned out in the instant its webhook is disabled is refused (or not fanned
out to it), or dies with the other waiting deliveries: it never waits, pending, to be sent once the webhook is
enabled again.

The two transactions are interleaved by hand: one holds the other at a row lock, which the test sees in
``pg_blocking_pids``, so the order is the same at every run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.principal import Actor
from registry.runtime import Runtime
from registry.webhooks.repository import WebhookRepository
from registry.webhooks.service import WebhookDisabledError, WebhookService
from tests.api import Client, Headers, create_prompt, create_version
from tests.webhooks.conftest import Receiver, replace_dispatcher
from tests.webhooks.test_disable import FakeClock

ADMIN = Actor("admin")


async def subscribe(client: Client, admin: Headers, url: str = "https://example.com/hook") -> int:
    response = await client.post("/v1/webhooks", json={"url": url, "events": ["*"]}, headers=admin)
    assert response.status_code == 201, response.text
    webhook_id: int = response.json()["webhook"]["id"]
    return webhook_id


async def backend_pid(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def held_back(runtime: Runtime, task: asyncio.Task[Any], *, waiting: int = 0, blocker: int = 0) -> bool:
    """Wait until ``task`` has finished, or until the transaction of backend ``waiting`` waits for a lock (or,
    with ``blocker``, until any transaction waits for that backend's); which one."""
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND (pid = :waiting OR :blocker = ANY(pg_blocking_pids(pid))) AND cardinality(pg_blocking_pids(pid)) > 0"
    )
    while not task.done():
        async with runtime.sessionmaker() as observer:
            if (await observer.execute(query, {"waiting": waiting, "blocker": blocker})).scalar_one():
                return True
        await asyncio.sleep(0.01)
    return False


async def statuses(runtime: Runtime, webhook_id: int) -> list[str]:
    async with runtime.sessionmaker() as session:
        rows = await session.execute(
            text("SELECT status FROM webhook_deliveries WHERE webhook_id = :id"), {"id": webhook_id}
        )
        return [row[0] for row in rows]


async def test_a_ping_sent_while_the_webhook_is_being_disabled_is_refused_and_never_queued(
    app: Litestar, client: Client, admin: Headers
) -> None:
    runtime: Runtime = app.state.runtime
    webhook_id = await subscribe(client, admin)
    async with runtime.sessionmaker() as disabling, runtime.sessionmaker() as pinging:
        await disabling.begin()
        await WebhookService(disabling, runtime.webhooks.guard).set_enabled(webhook_id, False, ADMIN)
        pid = await backend_pid(pinging)
        ping = asyncio.create_task(WebhookService(pinging, runtime.webhooks.guard).ping(webhook_id, ADMIN))
        waited = await held_back(runtime, ping, waiting=pid)
        await disabling.commit()
        with pytest.raises(WebhookDisabledError):
            await ping
        await pinging.commit()
    assert waited, "the ping waited for the disabling to end"
    assert await statuses(runtime, webhook_id) == [], "nothing was queued for the disabled webhook"


async def test_a_ping_queued_just_before_the_webhook_is_disabled_dies_with_the_waiting_deliveries(
    app: Litestar, client: Client, admin: Headers
) -> None:
    runtime: Runtime = app.state.runtime
    webhook_id = await subscribe(client, admin)
    async with runtime.sessionmaker() as pinging, runtime.sessionmaker() as disabling:
        await pinging.begin()
        await WebhookService(pinging, runtime.webhooks.guard).ping(webhook_id, ADMIN)
        pid = await backend_pid(disabling)
        disable = asyncio.create_task(
            WebhookService(disabling, runtime.webhooks.guard).set_enabled(webhook_id, False, ADMIN)
        )
        waited = await held_back(runtime, disable, waiting=pid)
        await pinging.commit()
        await disable
        await disabling.commit()
    assert waited, "the disabling waited for the ping to be committed"
    assert await statuses(runtime, webhook_id) == ["dead"]


async def test_a_redelivery_sent_while_the_webhook_is_being_disabled_is_refused_and_stays_dead(
    app: Litestar, client: Client, admin: Headers
) -> None:
    runtime: Runtime = app.state.runtime
    webhook_id = await subscribe(client, admin)
    assert (await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)).status_code == 202
    async with runtime.sessionmaker() as session:
        (delivery_id,) = (
            await session.execute(text("SELECT id FROM webhook_deliveries WHERE webhook_id = :id"), {"id": webhook_id})
        ).scalars()
    async with runtime.sessionmaker() as disabling, runtime.sessionmaker() as redelivering:
        await disabling.begin()
        await WebhookService(disabling, runtime.webhooks.guard).set_enabled(webhook_id, False, ADMIN)
        pid = await backend_pid(redelivering)
        service = WebhookService(redelivering, runtime.webhooks.guard)
        redeliver = asyncio.create_task(service.redeliver(webhook_id, delivery_id, ADMIN))
        waited = await held_back(runtime, redeliver, waiting=pid)
        await disabling.commit()
        with pytest.raises(WebhookDisabledError):
            await redeliver
        await redelivering.commit()
    assert waited, "the redelivery waited for the disabling to end"
    assert await statuses(runtime, webhook_id) == ["dead"], "the delivery the disabling abandoned stays dead"


async def test_a_redelivery_holding_its_webhook_does_not_deadlock_with_the_dispatcher_recording_an_attempt(
    app: Litestar, client: Client, admin: Headers, receiver: Receiver
) -> None:
    """A redelivery locks the webhook, then the delivery; the dispatcher, recording a round, locks the webhooks
    first too. Had it locked the delivery it recorded first, each would wait for the other."""
    runtime: Runtime = app.state.runtime
    dispatcher = replace_dispatcher(app, clock=FakeClock())
    receiver.script = [500]  # a failed attempt lengthens the webhook's run of failures: the round updates it
    webhook_id = await subscribe(client, admin, receiver.url)
    assert (await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)).status_code == 202
    async with runtime.sessionmaker() as session:
        (delivery_id,) = (
            await session.execute(text("SELECT id FROM webhook_deliveries WHERE webhook_id = :id"), {"id": webhook_id})
        ).scalars()
    async with runtime.sessionmaker() as redelivering, redelivering.begin():
        repository = WebhookRepository(redelivering)
        assert await repository.get_for_share(webhook_id) is not None
        pid = await backend_pid(redelivering)
        dispatch = asyncio.create_task(dispatcher.deliver_due())
        assert await held_back(runtime, dispatch, blocker=pid), "the dispatcher waited to record its round"
        delivery = await repository.get_delivery(webhook_id, delivery_id, for_update=True)
        assert delivery is not None
        assert delivery.locked_until is not None, "the delivery is being sent: a redelivery would be refused"
    assert await dispatch == 1
    assert await statuses(runtime, webhook_id) == ["retrying"]
    assert [body["type"] for body in receiver.bodies()] == ["ping"]


async def test_an_event_fanned_out_while_the_webhook_is_being_disabled_is_not_delivered_to_it(
    app: Litestar, client: Client, admin: Headers
) -> None:
    runtime: Runtime = app.state.runtime
    webhook_id = await subscribe(client, admin)
    await create_prompt(client, admin, "greeting")
    await create_version(client, admin, "greeting")  # an event in the outbox, not fanned out yet
    async with runtime.sessionmaker() as disabling, disabling.begin():
        await WebhookService(disabling, runtime.webhooks.guard).set_enabled(webhook_id, False, ADMIN)
        pid = await backend_pid(disabling)
        fan_out = asyncio.create_task(runtime.webhooks.fan_out())
        waited = await held_back(runtime, fan_out, blocker=pid)
    assert await fan_out == 0
    assert waited, "the fan-out waited for the disabling to end"
    assert await statuses(runtime, webhook_id) == [], "nothing was queued for the disabled webhook"
    enabled = await client.patch(f"/v1/webhooks/{webhook_id}", json={"enabled": True}, headers=admin)
    assert enabled.status_code == 200, enabled.text
    assert await statuses(runtime, webhook_id) == []
