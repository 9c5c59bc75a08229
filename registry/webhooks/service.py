from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession
from yarl import URL

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.db.base import utcnow
from registry.lib.errors import ConflictError, FieldError, InvalidInputError, NotFoundError
from registry.lib.pagination import PageRequest
from registry.webhooks.guard import AddressGuard
from registry.webhooks.models import Webhook, WebhookDelivery
from registry.webhooks.repository import DUE_STATUSES, WebhookRepository
from registry.webhooks.rules import pattern_problem


class WebhookNotFoundError(NotFoundError):
    """No webhook has this id."""

    type = "webhook_not_found"
    title = "Webhook not found"


class DeliveryInFlightError(ConflictError):
    """The delivery is being sent now: redelivering it would send it twice at once."""

    type = "webhook_delivery_in_flight"
    title = "Webhook delivery is being sent"


class DeliveryNotFoundError(NotFoundError):
    """The webhook has no delivery with this id."""

    type = "webhook_delivery_not_found"
    title = "Webhook delivery not found"


class WebhookDisabledError(ConflictError):
    """The webhook is disabled: nothing is sent to it until it is enabled again."""

    type = "webhook_disabled"
    title = "Webhook is disabled"


def abandoned_note(reason: str) -> str:
    """The error a waiting delivery is left with when its webhook is disabled; it can be redelivered once enabled."""
    return f"not attempted again: the webhook was disabled ({reason})"[:500]


def delivery_body(
    event_id: str, event_type: str, subject: str, actor: str, data: dict[str, object], created_at: datetime
) -> dict[str, object]:
    """What a receiver gets; ``created_at`` is when the event happened, the same for every webhook it goes to."""
    return {
        "id": event_id,
        "type": event_type,
        "subject": subject,
        "actor": actor,
        "created_at": created_at.isoformat(),
        "data": data,
    }


def state_of(webhook: Webhook) -> dict[str, object]:
    """A webhook's enabled state, as the audit log keeps it."""
    return {
        "enabled": webhook.disabled_at is None,
        "disabled_at": webhook.disabled_at.isoformat() if webhook.disabled_at else None,
        "reason": webhook.disabled_reason,
    }


class WebhookService:
    def __init__(self, session: AsyncSession, guard: AddressGuard) -> None:
        self.repository = WebhookRepository(session)
        self.audit = AuditLog(session)
        self.guard = guard

    async def create(self, url: str, event_types: list[str], description: str, actor: Actor) -> Webhook:
        problems = [
            FieldError(f"events[{i}]", problem)
            for i, pattern in enumerate(event_types)
            if (problem := pattern_problem(pattern)) is not None
        ]
        problems += await self._url_problems(url)
        if problems:
            raise InvalidInputError("the webhook is invalid", errors=problems)
        webhook = await self.repository.add(
            Webhook(
                url=url,
                event_types=sorted(set(event_types)),
                secret=f"whsec_{secrets.token_urlsafe(32)}",
                description=description,
                created_by=actor.name,
            )
        )
        await self.audit.record(
            actor, "webhook.create", "webhook", str(webhook.id), after={"url": url, "events": webhook.event_types}
        )
        return webhook

    async def _url_problems(self, url: str) -> list[FieldError]:
        if any(char.isspace() or not char.isprintable() or char == "\\" for char in url):
            # Parsers disagree on these (a tab dropped, a backslash read as a slash or refused), so the URL
            # checked here could be another than the one delivered to, or one deliveries cannot send to at all.
            return [FieldError("url", "must not hold spaces, control characters or backslashes")]
        try:
            parts = urlsplit(url)
            _ = parts.port  # reading it validates it
            URL(url)  # and the parser deliveries go out through accepts it
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            return [FieldError("url", "must be an absolute http:// or https:// URL")]
        if parts.username is not None or parts.password is not None:
            # A password in the URL would be shown in every listing and kept in the audit log, unlike the secret.
            return [
                FieldError(
                    "url", "must not hold a user name or password; receivers authenticate deliveries by signature"
                )
            ]
        refusal = await self.guard.url_refusal(url)
        return [] if refusal is None else [FieldError("url", refusal)]

    async def require(self, webhook_id: int) -> Webhook:
        webhook = await self.repository.get(webhook_id)
        if webhook is None:
            raise WebhookNotFoundError(f"no webhook has id {webhook_id}")
        return webhook

    async def list(self, page: PageRequest, *, enabled: bool | None = None) -> Sequence[Webhook]:
        return await self.repository.list_page(page, enabled=enabled)

    async def set_enabled(self, webhook_id: int, enabled: bool, actor: Actor) -> Webhook:
        """Enable or disable a webhook; the same state again changes nothing and is not audited.

        Enabling starts a new run of failures and delivers the events from then on; deliveries that died
        while it was disabled stay dead (redeliver them). Disabling marks its waiting deliveries dead, as the
        dispatcher does, and fans no event out to it.
        """
        webhook = await self.repository.get_for_update(webhook_id)
        if webhook is None:
            raise WebhookNotFoundError(f"no webhook has id {webhook_id}")
        if enabled == (webhook.disabled_at is None):
            return webhook
        before = state_of(webhook)
        now = utcnow()
        if enabled:
            webhook.disabled_at = None
            webhook.disabled_reason = None
            webhook.consecutive_failures = 0
            webhook.failing_since = None
            await self.repository.session.flush()
        else:
            webhook.disabled_at = now
            webhook.disabled_reason = f"disabled by {actor.name}"[:500]
            await self.repository.session.flush()
            await self.repository.abandon_due_deliveries(webhook_id, now, abandoned_note(webhook.disabled_reason))
        await self.audit.record(
            actor,
            "webhook.enable" if enabled else "webhook.disable",
            "webhook",
            str(webhook_id),
            before=before,
            after=state_of(webhook),
        )
        return webhook

    async def _require_enabled(self, webhook_id: int, *, hold: bool = False) -> None:
        """Refuse a disabled webhook; with ``hold``, the webhook stays share-locked until the caller's transaction
        ends, so it cannot be disabled between this check and what the caller then queues for it."""
        webhook = await (self.repository.get_for_share(webhook_id) if hold else self.repository.get(webhook_id))
        if webhook is None:
            raise WebhookNotFoundError(f"no webhook has id {webhook_id}")
        if webhook.disabled_at is not None:
            raise WebhookDisabledError(
                f"webhook {webhook_id} is disabled ({webhook.disabled_reason}); enable it first "
                '(PATCH {"enabled": true})'
            )

    async def delete(self, webhook_id: int, actor: Actor) -> None:
        webhook = await self.require(webhook_id)
        await self.repository.remove(webhook)
        await self.audit.record(actor, "webhook.delete", "webhook", str(webhook_id), before={"url": webhook.url})

    async def deliveries(self, webhook_id: int, page: PageRequest, *, status: str | None) -> Sequence[WebhookDelivery]:
        await self.require(webhook_id)
        return await self.repository.deliveries(webhook_id, page, status=status)

    async def redeliver(self, webhook_id: int, delivery_id: int, actor: Actor) -> WebhookDelivery:
        """Send a delivery again from its first attempt, with the same event id (receivers deduplicate on it).

        The webhook stays share-locked until the redelivery is committed, as for a ping: a disabling under way
        makes it wait, then refuses it, rather than the delivery it abandoned being made pending again behind it.
        """
        await self._require_enabled(webhook_id, hold=True)
        delivery = await self.repository.get_delivery(webhook_id, delivery_id, for_update=True)
        if delivery is None:
            raise DeliveryNotFoundError(f"webhook {webhook_id} has no delivery {delivery_id}")
        now = utcnow()
        if delivery.status in DUE_STATUSES and delivery.locked_until is not None and delivery.locked_until > now:
            # Its lease let a second replica send it alongside, and the first one's outcome then overwrote this.
            raise DeliveryInFlightError(
                f"delivery {delivery_id} is being sent now; redeliver it once its attempt is recorded"
            )
        before = {"status": delivery.status, "attempts": delivery.attempts}
        delivery.status = "pending"
        delivery.attempts = 0
        delivery.next_attempt_at = now
        delivery.locked_until = None
        await self.repository.session.flush()
        await self.audit.record(
            actor,
            "webhook.redeliver",
            "webhook",
            str(webhook_id),
            before={"delivery": delivery_id, **before},
            after={"delivery": delivery_id, "status": "pending", "attempts": 0},
        )
        return delivery

    async def ping(self, webhook_id: int, actor: Actor) -> None:
        """Queue a ``ping`` delivery, to check the receiver and its signature check.

        The webhook is checked under a lock held until the ping is committed, so no disabling slips in between
        the check and the insert (the ping would wait, pending, and be sent once the webhook was enabled again):
        a disabling under way makes the ping wait, then refuses it; one that comes after waits for the ping,
        then marks it dead with the webhook's other waiting deliveries.
        """
        await self._require_enabled(webhook_id, hold=True)
        event_id = str(uuid.uuid4())
        await self.repository.add_deliveries(
            [
                {
                    "webhook_id": webhook_id,
                    "event_id": event_id,
                    "event_type": "ping",
                    "body": delivery_body(
                        event_id, "ping", "webhook", actor.name, {"webhook_id": webhook_id}, utcnow()
                    ),
                }
            ]
        )
