"""What a hostile or careless webhook receiver answers: a body that never ends, 410 Gone, 429 with Retry-After.

Before: the dispatcher read a receiver's whole answer (a 2xx one too) into memory, so an answer that never ended
held the delivery until the timeout and made a 2xx a failure (and one of gigabytes filled the memory); 410 was
retried up to the last attempt; Retry-After was ignored, so a receiver asking for ten minutes got the next try in
seconds. And a delivery's ``created_at`` was when it was fanned out, not when its event happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from litestar import Litestar
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.db.base import utcnow
from registry.outbox.models import OutboxEvent
from registry.runtime import Runtime
from registry.webhooks.dispatcher import DeliveryPolicy, WebhookDispatcher
from registry.webhooks.guard import AddressGuard, WebhookHttp
from registry.webhooks.models import WebhookDelivery
from registry.webhooks.rules import retry_after_seconds
from tests.api import Headers
from tests.conftest import serve_in_process

ENDLESS = b"x" * 65536  # sent once, then the answer stalls: it never ends


class RawReceiver:
    """Answers by path: ``/endless-200`` and ``/endless-500`` start a body they never finish, ``/gone`` 410,
    ``/busy`` 429 with ``Retry-After: 600``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.paths: list[str] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            0,
        )
        await reader.readexactly(length)
        self.paths.append(path)
        if path.startswith("/endless"):
            status = path.rsplit("-", 1)[1]
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 10737418240\r\n\r\n".encode() + ENDLESS)
            await writer.drain()
            await self.release.wait()
        elif path == "/gone":
            writer.write(b"HTTP/1.1 410 Gone\r\nContent-Length: 4\r\n\r\ngone")
        else:
            writer.write(b"HTTP/1.1 429 Too Many\r\nRetry-After: 600\r\nContent-Length: 4\r\n\r\nbusy")
        await writer.drain()
        writer.close()


@pytest.fixture
async def raw_receiver() -> AsyncIterator[RawReceiver]:
    receiver = RawReceiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    receiver.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.close()
        await server.wait_closed()


async def test_a_receivers_endless_answer_gone_and_retry_after_are_what_the_delivery_log_says(
    app: Litestar, admin: Headers, raw_receiver: RawReceiver, clean_database: AsyncEngine
) -> None:
    runtime: Runtime = app.state.runtime
    paths = ["/endless-200", "/endless-500", "/gone", "/busy"]
    async with serve_in_process(app) as client:
        hooks = {}
        for path in paths:
            response = await client.post(
                "/v1/webhooks", json={"url": raw_receiver.url + path, "events": ["*"]}, headers=admin
            )
            assert response.status_code == 201, response.text
            hooks[path] = response.json()["webhook"]["id"]
            assert (await client.post(f"/v1/webhooks/{hooks[path]}/ping", headers=admin)).status_code == 202
        at = utcnow() + timedelta(seconds=1)
        dispatcher = WebhookDispatcher(
            runtime.sessionmaker,
            WebhookHttp(AddressGuard(runtime.settings.webhook_allowed_networks)),
            # A timeout long enough that only reading an endless answer to its end could reach it.
            DeliveryPolicy(timeout_seconds=30, max_attempts=10, retry_base_seconds=5, retry_max_seconds=3600),
            CollectorRegistry(),
            clock=lambda: at,
            jitter=lambda: 0.0,
        )
        try:
            assert await dispatcher.deliver_due() == 4
        finally:
            await dispatcher.close()
        logs = {
            path: (await client.get(f"/v1/webhooks/{hook}/deliveries", headers=admin)).json()["items"]
            for path, hook in hooks.items()
        }

    assert sorted(raw_receiver.paths) == sorted(paths)
    found = {
        path: (d["status"], d["attempts"], d["last_status_code"], (d["last_error"] or "")[:12])
        for path, (d,) in logs.items()
    }
    assert found == {
        "/endless-200": ("succeeded", 1, 200, ""),
        "/endless-500": ("retrying", 1, 500, "HTTP 500: xx"),
        "/gone": ("dead", 1, 410, "HTTP 410: go"),
        "/busy": ("retrying", 1, 429, "HTTP 429: bu"),
    }
    assert len(logs["/endless-500"][0]["last_error"]) <= len("HTTP 500: ") + 200
    retry_at = {path: datetime.fromisoformat(d["next_attempt_at"]) for path, (d,) in logs.items()}
    assert retry_at["/busy"] - at == timedelta(seconds=600)  # asked for; the backoff alone says 2.5 s
    assert retry_at["/endless-500"] - at == timedelta(seconds=2.5)


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0.0
    assert [retry_after_seconds(v, now) for v in (None, "", "soon", "-5", "1.5")] == [None] * 5


async def test_a_deliverys_created_at_is_when_its_event_happened(
    app: Litestar, admin: Headers, raw_receiver: RawReceiver, clean_database: AsyncEngine
) -> None:
    runtime: Runtime = app.state.runtime
    happened = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with serve_in_process(app) as client:
        for _ in range(2):
            response = await client.post(
                "/v1/webhooks", json={"url": raw_receiver.url + "/busy", "events": ["*"]}, headers=admin
            )
            assert response.status_code == 201, response.text
        async with runtime.sessionmaker() as session, session.begin():
            session.add(
                OutboxEvent(
                    event_id="dec6-created-at-0000000000000000000",
                    type="prompt.promoted",
                    subject="dec6-created-at",
                    payload={},
                    actor="someone",
                    created_at=happened,
                )
            )
        assert await runtime.webhooks.fan_out() == 2
        async with runtime.sessionmaker() as session:
            bodies = (await session.scalars(select(WebhookDelivery.body))).all()
    assert [body["created_at"] for body in bodies] == [happened.isoformat()] * 2
