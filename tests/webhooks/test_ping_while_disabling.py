"""A ping sent in the instant its webhook is disabled is refused or dies with the other waiting deliveries:
it never waits, pending, to be sent once the webhook is enabled again.

The two transactions are interleaved by hand: one holds the other at a row lock, which the test sees in
``pg_locks``, so the order is the same at every run.
"""

from __future__ import annotations

import asyncio

import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.principal import Actor
from registry.runtime import Runtime
from registry.webhooks.service import WebhookDisabledError, WebhookService
from tests.api import Client, Headers

ADMIN = Actor("admin")


async def subscribe(client: Client, admin: Headers) -> int:
    response = await client.post(
        "/v1/webhooks", json={"url": "https://example.com/hook", "events": ["*"]}, headers=admin
    )
    assert response.status_code == 201, response.text
    webhook_id: int = response.json()["webhook"]["id"]
    return webhook_id


async def backend_pid(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def held_back(runtime: Runtime, task: asyncio.Task[object], pid: int) -> bool:
    """Wait until ``task`` has finished or its transaction (backend ``pid``) waits for a lock; which one."""
    query = text("SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted")
    while not task.done():
        async with runtime.sessionmaker() as observer:
            if (await observer.execute(query, {"pid": pid})).scalar_one():
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
        waited = await held_back(runtime, ping, pid)
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
        waited = await held_back(runtime, disable, pid)
        await pinging.commit()
        await disable
        await disabling.commit()
    assert waited, "the disabling waited for the ping to be committed"
    assert await statuses(runtime, webhook_id) == ["dead"]
