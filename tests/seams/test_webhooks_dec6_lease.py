"""A delivery being sent is not claimed by another replica, whatever the delivery timeout.

Before: a claim held a delivery for a fixed 60 s, so with ``REGISTRY_WEBHOOK_TIMEOUT_SECONDS`` above that, a
receiver still answering the first replica got the same delivery from a second one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from litestar import Litestar
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.db.base import utcnow
from registry.runtime import Runtime
from registry.webhooks.dispatcher import DeliveryPolicy, WebhookDispatcher
from registry.webhooks.guard import AddressGuard, WebhookHttp
from tests.api import Headers
from tests.conftest import serve_in_process


async def test_a_second_replica_does_not_send_a_delivery_still_being_sent_under_a_long_timeout(
    app: Litestar, admin: Headers, clean_database: AsyncEngine
) -> None:
    runtime: Runtime = app.state.runtime
    at = utcnow() + timedelta(seconds=1)

    def replica(clock: Callable[[], datetime]) -> WebhookDispatcher:
        return WebhookDispatcher(
            runtime.sessionmaker,
            WebhookHttp(AddressGuard(runtime.settings.webhook_allowed_networks)),
            DeliveryPolicy(timeout_seconds=120, max_attempts=10, retry_base_seconds=5, retry_max_seconds=3600),
            CollectorRegistry(),
            clock=clock,
        )

    first, second = replica(lambda: at), replica(lambda: at + timedelta(seconds=61))  # 61 s into the first's try
    received: list[int] = []
    sent_by_second: list[int] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        received.append(len(received))
        if len(received) == 1:  # still answering the first replica when the second looks for due work
            sent_by_second.append(await second.deliver_due())
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        async with serve_in_process(app) as client:
            response = await client.post("/v1/webhooks", json={"url": url, "events": ["*"]}, headers=admin)
            assert response.status_code == 201, response.text
            assert (
                await client.post(f"/v1/webhooks/{response.json()['webhook']['id']}/ping", headers=admin)
            ).status_code == 202
            assert await first.deliver_due() == 1
    finally:
        await first.close()
        await second.close()
        server.close()
        await server.wait_closed()

    assert (received, sent_by_second) == ([0], [0])
