from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from registry.lib.schema import TEXT_PATTERN, Input, Output
from registry.webhooks.models import Webhook, WebhookDelivery

EventPattern = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class CreateWebhook(Input):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    events: Annotated[list[EventPattern], msgspec.Meta(min_length=1, max_length=32)]
    description: Annotated[str, msgspec.Meta(max_length=500, pattern=TEXT_PATTERN)] = ""


class UpdateWebhook(Input):
    """Enable a disabled webhook (deliveries resume from then on) or disable one (nothing is sent to it)."""

    enabled: bool


class WebhookOut(Output):
    id: int
    url: str
    events: list[str]
    description: str
    created_at: datetime
    created_by: str
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str | None
    consecutive_failures: int
    failing_since: datetime | None

    @classmethod
    def of(cls, webhook: Webhook) -> WebhookOut:
        return cls(
            id=webhook.id,
            url=webhook.url,
            events=list(webhook.event_types),
            description=webhook.description,
            created_at=webhook.created_at,
            created_by=webhook.created_by,
            enabled=webhook.disabled_at is None,
            disabled_at=webhook.disabled_at,
            disabled_reason=webhook.disabled_reason,
            consecutive_failures=webhook.consecutive_failures,
            failing_since=webhook.failing_since,
        )


class CreatedWebhook(Output):
    """The signing secret is shown here only."""

    secret: str
    webhook: WebhookOut


class WebhookPage(Output):
    items: list[WebhookOut]
    next_cursor: str | None


class DeliveryOut(Output):
    id: int
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    body: dict[str, Any]

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=delivery.id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            status=delivery.status,
            attempts=delivery.attempts,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            next_attempt_at=delivery.next_attempt_at,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            body=delivery.body,
        )


class DeliveryPage(Output):
    items: list[DeliveryOut]
    next_cursor: str | None
