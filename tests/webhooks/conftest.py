"""Fixtures of the webhook tests: a receiver on this machine that answers from a script, and dispatchers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar, Request, Response, post
from litestar.exceptions import HTTPException
from prometheus_client import CollectorRegistry

from registry.db.base import utcnow
from registry.runtime import Runtime
from registry.webhooks.dispatcher import DeliveryPolicy, WebhookDispatcher
from registry.webhooks.guard import AddressGuard, WebhookHttp
from tests.conftest import serve_over_http


@dataclass
class Receiver:
    """A webhook receiver that answers from a script of status codes, then 200; a failure with ``failure_body``
    (bytes as they are) when one is given."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    failure_body: bytes | None = None
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    @post("/hook", status_code=200)
    async def hook(request: Request[Any, Any, Any]) -> Response[Any]:
        state.received.append((dict(request.headers), await request.body()))
        status = state.script.pop(0) if state.script else 200
        if status != 200 and state.failure_body is not None:
            return Response(state.failure_body, status_code=status, media_type="text/plain")
        if status != 200:
            raise HTTPException(status_code=status, detail="scripted failure")
        return Response({"ok": "yes"})

    async with serve_over_http(Litestar([hook])) as base:
        state.url = f"{base}/hook"
        yield state


def replace_dispatcher(
    app: Litestar,
    *,
    guard: AddressGuard | None = None,
    clock: Callable[[], datetime] = utcnow,
    registry: CollectorRegistry | None = None,
) -> WebhookDispatcher:
    """Give the app a dispatcher built as the runtime builds it, with a stand-in resolver or clock.

    The service checks new webhooks with the same dispatcher's guard, so creation and
    delivery see the same resolver.
    """
    runtime: Runtime = app.state.runtime
    settings = runtime.settings
    runtime.webhooks = WebhookDispatcher(
        runtime.sessionmaker,
        WebhookHttp(guard or AddressGuard(settings.webhook_allowed_networks)),
        DeliveryPolicy(
            timeout_seconds=settings.webhook_timeout_seconds,
            max_attempts=settings.webhook_max_attempts,
            retry_base_seconds=settings.webhook_retry_base_seconds,
            retry_max_seconds=settings.webhook_retry_max_seconds,
            disable_after_failures=settings.webhook_disable_after_failures,
            disable_after=timedelta(days=settings.webhook_disable_after_days),
        ),
        registry or CollectorRegistry(),
        clock=clock,
    )
    return runtime.webhooks
