from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from registry.lib.pagination import PageRequest
from registry.outbox.models import OutboxEvent
from registry.webhooks.models import Webhook, WebhookDelivery

DUE_STATUSES = ("pending", "retrying")
FINISHED_STATUSES = ("succeeded", "dead")


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, webhook: Webhook) -> Webhook:
        self.session.add(webhook)
        await self.session.flush()
        return webhook

    async def get(self, webhook_id: int) -> Webhook | None:
        return await self.session.get(Webhook, webhook_id)

    async def list_page(self, page: PageRequest) -> Sequence[Webhook]:
        query = select(Webhook).order_by(Webhook.id).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(Webhook.id > page.after_number)
        return (await self.session.scalars(query)).all()

    async def all(self) -> Sequence[Webhook]:
        return (await self.session.scalars(select(Webhook))).all()

    async def remove(self, webhook: Webhook) -> None:
        await self.session.execute(delete(Webhook).where(Webhook.id == webhook.id))

    async def deliveries(self, webhook_id: int, page: PageRequest, *, status: str | None) -> Sequence[WebhookDelivery]:
        query = (
            select(WebhookDelivery)
            .where(WebhookDelivery.webhook_id == webhook_id)
            .order_by(WebhookDelivery.id.desc())
            .limit(page.limit + 1)
        )
        if page.after is not None:
            query = query.where(WebhookDelivery.id < page.after_number)
        if status is not None:
            query = query.where(WebhookDelivery.status == status)
        return (await self.session.scalars(query)).all()

    # -- dispatch

    async def claim_undispatched_events(self, limit: int) -> Sequence[OutboxEvent]:
        """Events not yet fanned out; other replicas skip the rows this transaction locks."""
        query = (
            select(OutboxEvent)
            .where(OutboxEvent.dispatched_at.is_(None))
            .order_by(OutboxEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return (await self.session.scalars(query)).all()

    async def get_delivery(
        self, webhook_id: int, delivery_id: int, *, for_update: bool = False
    ) -> WebhookDelivery | None:
        delivery = await self.session.get(WebhookDelivery, delivery_id, with_for_update=for_update)
        return delivery if delivery is not None and delivery.webhook_id == webhook_id else None

    async def add_deliveries(self, rows: list[dict[str, object]]) -> None:
        if rows:
            await self.session.execute(insert(WebhookDelivery), rows)

    async def mark_dispatched(self, event_ids: list[int], at: datetime) -> None:
        if event_ids:
            await self.session.execute(
                update(OutboxEvent).where(OutboxEvent.id.in_(event_ids)).values(dispatched_at=at)
            )

    async def claim_due(self, now: datetime, lease_until: datetime, limit: int) -> Sequence[WebhookDelivery]:
        query = (
            select(WebhookDelivery)
            .where(
                WebhookDelivery.status.in_(DUE_STATUSES),
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        due = (await self.session.scalars(query)).all()
        for delivery in due:
            delivery.locked_until = lease_until
        await self.session.flush()
        return due

    async def purge_finished(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` sent events and finished deliveries older than ``before``; how many rows went.

        Finished deliveries are found through the due index (a finished one's ``next_attempt_at`` is its last
        try's), sent events through the pending one, so a round that finds nothing costs two index probes.
        """
        finished = (WebhookDelivery.status.in_(FINISHED_STATUSES), WebhookDelivery.next_attempt_at < before)
        old_deliveries = select(WebhookDelivery.id).where(*finished).limit(limit)
        old_events = select(OutboxEvent.id).where(OutboxEvent.dispatched_at < before).limit(limit)
        # The conditions again outside: PostgreSQL checks them anew on a row redelivered meanwhile, which stays.
        deliveries = await self.session.execute(
            delete(WebhookDelivery).where(WebhookDelivery.id.in_(old_deliveries), *finished)
        )
        events = await self.session.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(old_events)))
        return int(getattr(deliveries, "rowcount", 0) or 0) + int(getattr(events, "rowcount", 0) or 0)

    async def webhooks_by_id(self, ids: set[int]) -> dict[int, Webhook]:
        rows = (await self.session.scalars(select(Webhook).where(Webhook.id.in_(ids)))).all()
        return {w.id: w for w in rows}

    async def record_attempt(self, delivery_id: int, values: dict[str, object]) -> None:
        await self.session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))
