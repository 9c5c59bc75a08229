"""A delivery being sent (claimed, its lease running) cannot be redelivered: 409, and it stays claimed.

Before: redeliver cleared the claim, so a second replica sent the delivery while the first was still sending it,
and the first one's outcome then overwrote the redelivery (a dead outcome undid it).
"""

from __future__ import annotations

from datetime import timedelta

from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.db.base import utcnow
from registry.runtime import Runtime
from registry.webhooks.repository import WebhookRepository
from tests.api import Headers
from tests.conftest import serve_in_process


async def test_a_delivery_being_sent_is_not_redelivered_until_its_attempt_ends(
    app: Litestar, admin: Headers, clean_database: AsyncEngine
) -> None:
    runtime: Runtime = app.state.runtime
    async with serve_in_process(app) as client:
        created = await client.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}, headers=admin
        )
        hook = created.json()["webhook"]["id"]
        assert (await client.post(f"/v1/webhooks/{hook}/ping", headers=admin)).status_code == 202
        now = utcnow() + timedelta(seconds=1)
        async with runtime.sessionmaker() as session, session.begin():  # a replica's claim, its attempt under way
            (claimed,) = await WebhookRepository(session).claim_due(now, now + timedelta(seconds=60), 10)
        redeliver = f"/v1/webhooks/{hook}/deliveries/{claimed.id}/redeliver"
        busy = await client.post(redeliver, headers=admin)
        async with runtime.sessionmaker() as session:
            still = await WebhookRepository(session).get_delivery(hook, claimed.id)
            assert still is not None
            assert still.locked_until == now + timedelta(seconds=60)
        async with runtime.sessionmaker() as session, session.begin():  # the attempt's outcome is recorded
            await WebhookRepository(session).record_attempt(
                claimed.id, {"status": "dead", "attempts": 1, "locked_until": None}
            )
        again = await client.post(redeliver, headers=admin)

    assert (busy.status_code, busy.json()["type"]) == (409, "/problems/webhook_delivery_in_flight")
    assert (again.status_code, again.json()["status"], again.json()["attempts"]) == (200, "pending", 0)
