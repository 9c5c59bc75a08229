from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.schema import paginate
from registry.runtime import Runtime
from registry.webhooks.schemas import (
    CreatedWebhook,
    CreateWebhook,
    DeliveryOut,
    DeliveryPage,
    UpdateWebhook,
    WebhookOut,
    WebhookPage,
)
from registry.webhooks.service import WebhookService

DeliveryStatus = Literal["pending", "retrying", "succeeded", "dead"]


def provide_webhook_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> WebhookService:
    return WebhookService(db_session, runtime.webhooks.guard)


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]
    dependencies = {"service": Provide(provide_webhook_service, sync_to_thread=False)}

    @post(
        "/",
        opt={"scope": Scope.ADMIN},
        operation_id="createWebhook",
        summary="Subscribe a URL to events",
        description="The response holds the signing secret; it is never shown again.",
    )
    async def create_webhook(
        self,
        data: JSONBody[CreateWebhook],
        service: NamedDependency[WebhookService],
        current_actor: NamedDependency[Actor],
    ) -> CreatedWebhook:
        webhook = await service.create(data.url, data.events, data.description, current_actor)
        return CreatedWebhook(secret=webhook.secret, webhook=WebhookOut.of(webhook))

    @get("/", opt={"scope": Scope.ADMIN}, operation_id="listWebhooks", summary="List webhooks")
    async def list_webhooks(
        self,
        service: NamedDependency[WebhookService],
        page: NamedDependency[PageRequest],
        enabled: Annotated[
            bool | None, QueryParameter(description="Only enabled (true) or disabled (false) ones.")
        ] = None,
    ) -> WebhookPage:
        rows = await service.list(page, enabled=enabled)
        items, cursor = paginate(rows, page.limit, lambda w: encode_cursor(w.id))
        return WebhookPage(items=[WebhookOut.of(w) for w in items], next_cursor=cursor)

    @get("/{webhook_id:int}", opt={"scope": Scope.ADMIN}, operation_id="getWebhook", summary="Get a webhook")
    async def get_webhook(self, webhook_id: FromPath[int], service: NamedDependency[WebhookService]) -> WebhookOut:
        return WebhookOut.of(await service.require(webhook_id))

    @patch(
        "/{webhook_id:int}",
        opt={"scope": Scope.ADMIN},
        operation_id="updateWebhook",
        summary="Enable or disable a webhook",
        description="A webhook whose every attempt failed for long enough, or whose receiver answered 410 Gone, "
        "is disabled by the dispatcher (`disabled_reason` says why). Enabling it delivers the events from then on; "
        "deliveries that died meanwhile stay dead (redeliver them). Disabling it marks its waiting deliveries dead.",
    )
    async def update_webhook(
        self,
        webhook_id: FromPath[int],
        data: JSONBody[UpdateWebhook],
        service: NamedDependency[WebhookService],
        current_actor: NamedDependency[Actor],
    ) -> WebhookOut:
        return WebhookOut.of(await service.set_enabled(webhook_id, data.enabled, current_actor))

    @delete("/{webhook_id:int}", opt={"scope": Scope.ADMIN}, operation_id="deleteWebhook", summary="Delete a webhook")
    async def delete_webhook(
        self, webhook_id: FromPath[int], service: NamedDependency[WebhookService], current_actor: NamedDependency[Actor]
    ) -> None:
        await service.delete(webhook_id, current_actor)

    @get(
        "/{webhook_id:int}/deliveries",
        opt={"scope": Scope.ADMIN},
        operation_id="listWebhookDeliveries",
        summary="The delivery log, newest first",
    )
    async def deliveries(
        self,
        webhook_id: FromPath[int],
        service: NamedDependency[WebhookService],
        page: NamedDependency[PageRequest],
        status: Annotated[DeliveryStatus | None, QueryParameter()] = None,
    ) -> DeliveryPage:
        rows = await service.deliveries(webhook_id, page, status=status)
        items, cursor = paginate(rows, page.limit, lambda d: encode_cursor(d.id))
        return DeliveryPage(items=[DeliveryOut.of(d) for d in items], next_cursor=cursor)

    @post(
        "/{webhook_id:int}/deliveries/{delivery_id:int}/redeliver",
        opt={"scope": Scope.ADMIN},
        operation_id="redeliverWebhookDelivery",
        summary="Send a delivery again",
        description="The delivery starts over from its first attempt, with the same event id and body; "
        "409 while an attempt of it is being sent, or while the webhook is disabled.",
        status_code=200,
    )
    async def redeliver(
        self,
        webhook_id: FromPath[int],
        delivery_id: FromPath[int],
        service: NamedDependency[WebhookService],
        current_actor: NamedDependency[Actor],
    ) -> DeliveryOut:
        return DeliveryOut.of(await service.redeliver(webhook_id, delivery_id, current_actor))

    @post(
        "/{webhook_id:int}/ping",
        opt={"scope": Scope.ADMIN},
        operation_id="pingWebhook",
        summary="Queue a signed test delivery",
        description="409 while the webhook is disabled.",
        status_code=202,
    )
    async def ping(
        self, webhook_id: FromPath[int], service: NamedDependency[WebhookService], current_actor: NamedDependency[Actor]
    ) -> None:
        await service.ping(webhook_id, current_actor)
