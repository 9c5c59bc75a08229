"""Sent outbox events and finished deliveries are forgotten after 30 days; nothing still due is.

Before: every event stayed in the outbox and every delivery in the log forever, both growing with each change.
"""

from __future__ import annotations

from datetime import timedelta

from litestar import Litestar
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.db.base import utcnow
from registry.outbox.models import OutboxEvent
from registry.runtime import Runtime
from registry.webhooks.models import Webhook, WebhookDelivery
from tests.conftest import serve_in_process


async def test_old_sent_events_and_finished_deliveries_are_purged_and_due_ones_kept(
    app: Litestar, clean_database: AsyncEngine
) -> None:
    runtime: Runtime = app.state.runtime
    async with serve_in_process(app):  # started and stopped, so its connections are closed
        await purge_and_check(runtime)


async def purge_and_check(runtime: Runtime) -> None:
    now = utcnow()
    old, recent = now - timedelta(days=31), now - timedelta(days=29)
    async with runtime.sessionmaker() as session, session.begin():
        hook = Webhook(url="http://127.0.0.1:9/hook", event_types=["*"], secret="whsec_x", created_by="x")
        session.add(hook)
        await session.flush()
        events = [("old-sent", old), ("recent-sent", recent), ("unsent", None)]
        await session.execute(
            insert(OutboxEvent),
            [
                {
                    "event_id": name,
                    "type": "prompt.promoted",
                    "subject": "s",
                    "payload": {},
                    "actor": "a",
                    "dispatched_at": at,
                }
                for name, at in events
            ],
        )
        deliveries = [
            ("old-succeeded", "succeeded", old),
            ("old-dead", "dead", old),
            ("old-retrying", "retrying", old),
            ("recent-dead", "dead", recent),
        ]
        await session.execute(
            insert(WebhookDelivery),
            [
                {
                    "webhook_id": hook.id,
                    "event_id": name,
                    "event_type": "ping",
                    "body": {},
                    "status": status,
                    "next_attempt_at": at,
                    "locked_until": now + timedelta(hours=1),
                }
                for name, status, at in deliveries
            ],
        )
    assert await runtime.webhooks.purge() == 3
    async with runtime.sessionmaker() as session:
        kept_events = set((await session.scalars(select(OutboxEvent.event_id))).all())
        kept_deliveries = set((await session.scalars(select(WebhookDelivery.event_id))).all())
    assert kept_events == {"recent-sent", "unsent"}
    assert kept_deliveries == {"old-retrying", "recent-dead"}
