from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, or_, select, update
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

    async def get_for_update(self, webhook_id: int) -> Webhook | None:
        return await self.session.get(Webhook, webhook_id, with_for_update=True)

    async def get_for_share(self, webhook_id: int) -> Webhook | None:
        """The webhook, read under a share lock held to the end of the transaction: a change to its state
        (``get_for_update``) waits for this transaction, and this read waits for one under way, then reads
        what it committed. Several such readers do not wait for each other."""
        return await self.session.get(Webhook, webhook_id, with_for_update={"read": True}, populate_existing=True)

    async def list_page(self, page: PageRequest, *, enabled: bool | None = None) -> Sequence[Webhook]:
        query = select(Webhook).order_by(Webhook.id).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(Webhook.id > page.after_number)
        if enabled is not None:
            query = query.where(Webhook.disabled_at.is_(None) if enabled else Webhook.disabled_at.is_not(None))
        return (await self.session.scalars(query)).all()

    async def enabled(self) -> Sequence[Webhook]:
        """The webhooks events are delivered to: a disabled one gets no delivery until it is enabled again.

        Share-locked until the transaction ends, so none is disabled between this read and the deliveries
        queued for it: a disabling under way is waited for (and the webhook it disabled left out), one that
        comes after waits and then marks the new deliveries dead with the webhook's other waiting ones.
        """
        query = select(Webhook).where(Webhook.disabled_at.is_(None)).order_by(Webhook.id).with_for_update(read=True)
        return (await self.session.scalars(query)).all()

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
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(
                WebhookDelivery.status.in_(DUE_STATUSES),
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
                Webhook.disabled_at.is_(None),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            # The deliveries only: locking their webhooks too would make replicas skip each other's webhooks.
            .with_for_update(skip_locked=True, of=WebhookDelivery)
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

    async def lock_webhooks(self, ids: list[int]) -> None:
        """Lock these webhooks' rows for an update, in the order of their ids."""
        if ids:
            query = select(Webhook.id).where(Webhook.id.in_(ids)).order_by(Webhook.id).with_for_update(key_share=True)
            await self.session.execute(query)

    async def record_attempt(self, delivery_id: int, values: dict[str, object]) -> None:
        await self.session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))

    # -- a failing receiver's streak, and disabling

    async def end_failure_streak(self, webhook_id: int) -> None:
        await self.session.execute(
            update(Webhook)
            .where(Webhook.id == webhook_id, Webhook.consecutive_failures != 0)
            .values(consecutive_failures=0, failing_since=None)
            .execution_options(synchronize_session=False)
        )

    async def add_failures(self, webhook_id: int, count: int, first_at: datetime) -> tuple[int, datetime | None]:
        """Lengthen the webhook's run of failed attempts; its length and start now (the row stays locked)."""
        row = (
            await self.session.execute(
                update(Webhook)
                .where(Webhook.id == webhook_id)
                .values(
                    consecutive_failures=Webhook.consecutive_failures + count,
                    failing_since=func.coalesce(Webhook.failing_since, first_at),
                )
                .returning(Webhook.consecutive_failures, Webhook.failing_since)
                .execution_options(synchronize_session=False)
            )
        ).one_or_none()
        return (0, None) if row is None else (row[0], row[1])

    async def disable(self, webhook_id: int, at: datetime, reason: str) -> bool:
        """Disable the webhook unless it already is; whether this call did (one replica of several does)."""
        disabled = await self.session.execute(
            update(Webhook)
            .where(Webhook.id == webhook_id, Webhook.disabled_at.is_(None))
            .values(disabled_at=at, disabled_reason=reason[:500])
            .returning(Webhook.id)
            .execution_options(synchronize_session=False)
        )
        return disabled.one_or_none() is not None

    async def abandon_due_deliveries(self, webhook_id: int, now: datetime, note: str) -> int:
        """Mark the webhook's waiting deliveries dead (``note`` as their error); one being sent keeps its outcome."""
        result = await self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.webhook_id == webhook_id,
                WebhookDelivery.status.in_(DUE_STATUSES),
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
            )
            .values(status="dead", last_error=note[:500], locked_until=None)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)
