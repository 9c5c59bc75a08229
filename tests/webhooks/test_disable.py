"""A webhook whose receiver keeps failing is disabled: nothing more is sent to it until its owner enables it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from litestar import Litestar
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.db.base import utcnow
from registry.settings import Settings
from registry.webhooks import dispatcher as dispatcher_module
from registry.webhooks.dispatcher import WebhookDispatcher
from registry.webhooks.repository import WebhookRepository
from tests.api import Client, Headers, create_prompt, create_version
from tests.conftest import count_rows, problem, serve_in_process
from tests.webhooks.conftest import Receiver, replace_dispatcher


class FakeClock:
    """The dispatcher's clock; a minute ahead, so what the API queues now is due at its first round."""

    def __init__(self) -> None:
        self.now = utcnow() + timedelta(minutes=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class RecordedLogs:
    """Stands in for the dispatcher's logger: a logger bound at its first use escapes structlog's capture."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str) -> Callable[..., None]:
        def log(event: str, **fields: Any) -> None:
            self.lines.append((level, event, fields))

        return log

    def __getattr__(self, level: str) -> Callable[..., None]:
        return self._record(level)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> RecordedLogs:
    recorded = RecordedLogs()
    monkeypatch.setattr(dispatcher_module, "logger", recorded)
    return recorded


def failing_app(settings: Settings, *, failures: int, days: float) -> Litestar:
    return create_app(
        settings.model_copy(
            update={
                "webhook_disable_after_failures": failures,
                "webhook_disable_after_days": days,
                "webhook_retry_base_seconds": 1,
                "webhook_retry_max_seconds": 1,
                "webhook_max_attempts": 50,
            }
        )
    )


async def subscribe(client: Client, admin: Headers, url: str) -> int:
    response = await client.post("/v1/webhooks", json={"url": url, "events": ["*"]}, headers=admin)
    assert response.status_code == 201, response.text
    webhook_id: int = response.json()["webhook"]["id"]
    return webhook_id


async def webhook(client: Client, admin: Headers, webhook_id: int) -> dict[str, Any]:
    response = await client.get(f"/v1/webhooks/{webhook_id}", headers=admin)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def deliveries(client: Client, admin: Headers, webhook_id: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=admin)).json()[
        "items"
    ]
    return items


async def rounds(dispatcher: WebhookDispatcher, clock: FakeClock, count: int, **step: float) -> None:
    for _ in range(count):
        await dispatcher.run_once()
        clock.advance(**step)


def disabled_count(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("registry_webhook_disabled_total", {"reason": reason}) or 0.0


async def test_a_receiver_that_always_fails_is_disabled_once_it_failed_often_and_long_enough(
    settings: Settings, admin: Headers, receiver: Receiver, clean_database: AsyncEngine, logs: RecordedLogs
) -> None:
    app = failing_app(settings, failures=3, days=1)
    clock, registry = FakeClock(), CollectorRegistry()
    dispatcher = replace_dispatcher(app, clock=clock, registry=registry)
    receiver.script = [500] * 100
    async with serve_in_process(app) as client:
        webhook_id = await subscribe(client, admin, receiver.url)
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
        started = clock.now
        # One attempt every 2 hours: three failures come after 4 hours, a day of failing after 12 rounds.
        await rounds(dispatcher, clock, 12, hours=2)
        still = await webhook(client, admin, webhook_id)
        assert len(receiver.received) == 12
        assert (still["enabled"], still["consecutive_failures"]) == (True, 12)
        assert datetime.fromisoformat(still["failing_since"]) == started
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)  # a second delivery waits too

        await rounds(dispatcher, clock, 1, hours=2)  # the 13th failure is 24 hours after the first
        disabled = await webhook(client, admin, webhook_id)
        attempts = len(receiver.received)
        await rounds(dispatcher, clock, 10, hours=2)
        log = await deliveries(client, admin, webhook_id)
        audit = (await client.get("/v1/audit", params={"resource_name": str(webhook_id)}, headers=admin)).json()

    assert disabled["enabled"] is False
    assert datetime.fromisoformat(disabled["disabled_at"]) == started + timedelta(hours=24)
    assert disabled["disabled_reason"].startswith("14 attempts in a row failed since")  # both deliveries' attempts
    assert "HTTP 500" in disabled["disabled_reason"]
    assert attempts == 14
    assert len(receiver.received) == 14  # nothing sent after disabling
    assert [d["status"] for d in log] == ["dead", "dead"]
    assert all(d["last_error"].startswith("not attempted again: the webhook was disabled") for d in log)
    assert disabled_count(registry, "failing") == 1
    entry = audit["items"][0]
    assert (entry["action"], entry["actor"]) == ("webhook.disable", "webhook-dispatcher")
    assert entry["after"]["enabled"] is False
    assert entry["after"]["deliveries_abandoned"] == 2
    (line,) = [fields for level, event, fields in logs.lines if event == "webhook disabled"]
    assert (line["webhook"], line["consecutive_failures"]) == (webhook_id, 14)


async def test_a_delivered_attempt_ends_the_run_of_failures(
    settings: Settings, admin: Headers, receiver: Receiver, clean_database: AsyncEngine
) -> None:
    app = failing_app(settings, failures=3, days=0)
    clock = FakeClock()
    dispatcher = replace_dispatcher(app, clock=clock)
    receiver.script = [500, 500, 200, 500, 500, 500]
    async with serve_in_process(app) as client:
        webhook_id = await subscribe(client, admin, receiver.url)
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
        await rounds(dispatcher, clock, 3, seconds=2)  # fails twice, then is delivered
        assert (await webhook(client, admin, webhook_id))["consecutive_failures"] == 0
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
        await rounds(dispatcher, clock, 2, seconds=2)
        two = await webhook(client, admin, webhook_id)
        await rounds(dispatcher, clock, 1, seconds=2)
        three = await webhook(client, admin, webhook_id)
    # Four failures of five attempts, but never three in a row until the last.
    assert (two["enabled"], two["consecutive_failures"]) == (True, 2)
    assert (three["enabled"], three["consecutive_failures"]) == (False, 3)
    assert len(receiver.received) == 6


async def test_a_410_gone_disables_the_webhook_at_once(
    settings: Settings, admin: Headers, receiver: Receiver, clean_database: AsyncEngine
) -> None:
    app = failing_app(settings, failures=20, days=5)
    clock, registry = FakeClock(), CollectorRegistry()
    dispatcher = replace_dispatcher(app, clock=clock, registry=registry)
    receiver.script = [410]
    async with serve_in_process(app) as client:
        webhook_id = await subscribe(client, admin, receiver.url)
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
        await rounds(dispatcher, clock, 1, seconds=2)
        await create_prompt(client, admin, "greeting")
        await create_version(client, admin, "greeting")  # an event while disabled: no delivery is made for it
        await rounds(dispatcher, clock, 3, seconds=2)
        gone = await webhook(client, admin, webhook_id)
        log = await deliveries(client, admin, webhook_id)
    assert (gone["enabled"], gone["disabled_reason"]) == (False, "the receiver answered 410 Gone")
    assert [(d["event_type"], d["status"], d["attempts"]) for d in log] == [("ping", "dead", 1)]
    assert len(receiver.received) == 1
    assert disabled_count(registry, "gone") == 1


async def test_a_disabled_webhook_gets_no_attempts_and_enabling_it_resumes_deliveries(
    settings: Settings, admin: Headers, receiver: Receiver, clean_database: AsyncEngine
) -> None:
    app = failing_app(settings, failures=2, days=0)
    clock = FakeClock()
    dispatcher = replace_dispatcher(app, clock=clock)
    receiver.script = [503, 503]
    async with serve_in_process(app) as client:
        webhook_id = await subscribe(client, admin, receiver.url)
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
        await rounds(dispatcher, clock, 5, seconds=2)
        assert (await webhook(client, admin, webhook_id))["enabled"] is False
        assert len(receiver.received) == 2
        (dead,) = await deliveries(client, admin, webhook_id)
        redeliver = f"/v1/webhooks/{webhook_id}/deliveries/{dead['id']}/redeliver"
        refused = await client.post(redeliver, headers=admin)
        assert refused.status_code == 409
        assert problem(refused)["type"].endswith("webhook_disabled")
        assert (await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)).status_code == 409
        await create_prompt(client, admin, "greeting")
        await create_version(client, admin, "greeting")
        await rounds(dispatcher, clock, 3, seconds=2)
        assert len(receiver.received) == 2
        assert await count_rows(clean_database, "webhook_deliveries") == 1

        enabled = await client.patch(f"/v1/webhooks/{webhook_id}", json={"enabled": True}, headers=admin)
        assert enabled.status_code == 200, enabled.text
        assert (await client.post(redeliver, headers=admin)).status_code == 200
        await create_version(client, admin, "greeting", "Hello again {{ name }}")
        await rounds(dispatcher, clock, 2, seconds=2)
        log = await deliveries(client, admin, webhook_id)
        audit = (await client.get("/v1/audit", params={"resource_name": str(webhook_id)}, headers=admin)).json()
    body = enabled.json()
    assert (body["enabled"], body["disabled_at"], body["disabled_reason"], body["consecutive_failures"]) == (
        True,
        None,
        None,
        0,
    )
    # The event of the disabled time is not delivered; the redelivered ping and the later event are.
    assert sorted(b["type"] for b in receiver.bodies()[2:]) == ["ping", "prompt.version.created"]
    assert [b["data"]["version"] for b in receiver.bodies()[2:] if b["type"] != "ping"] == [2]
    assert sorted((d["event_type"], d["status"]) for d in log) == [
        ("ping", "succeeded"),
        ("prompt.version.created", "succeeded"),
    ]
    assert [e["action"] for e in audit["items"][:3]] == ["webhook.redeliver", "webhook.enable", "webhook.disable"]


async def test_the_owner_disables_a_webhook_and_its_waiting_deliveries_die(
    client: Client, admin: Headers, receiver: Receiver, app: Litestar
) -> None:
    webhook_id = await subscribe(client, admin, receiver.url)
    await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
    response = await client.patch(f"/v1/webhooks/{webhook_id}", json={"enabled": False}, headers=admin)
    assert response.status_code == 200, response.text
    await app.state.runtime.webhooks.run_once()
    (delivery,) = await deliveries(client, admin, webhook_id)
    again = await client.patch(f"/v1/webhooks/{webhook_id}", json={"enabled": False}, headers=admin)
    audit = (await client.get("/v1/audit", params={"resource_name": str(webhook_id)}, headers=admin)).json()
    assert (response.json()["enabled"], response.json()["disabled_reason"]) == (False, "disabled by admin")
    assert receiver.received == []
    assert delivery["status"] == "dead"
    assert again.json()["disabled_at"] == response.json()["disabled_at"]  # the same state again changes nothing
    assert [e["action"] for e in audit["items"]] == ["webhook.disable", "webhook.create"]


async def test_webhooks_are_listed_by_state(client: Client, admin: Headers, clean_database: AsyncEngine) -> None:
    first = await subscribe(client, admin, "https://example.com/one")
    second = await subscribe(client, admin, "https://example.com/two")
    await client.patch(f"/v1/webhooks/{second}", json={"enabled": False}, headers=admin)

    def ids(response: Any) -> list[int]:
        assert response.status_code == 200, response.text
        return [w["id"] for w in response.json()["items"]]

    assert ids(await client.get("/v1/webhooks", headers=admin)) == [first, second]
    assert ids(await client.get("/v1/webhooks", params={"enabled": "true"}, headers=admin)) == [first]
    assert ids(await client.get("/v1/webhooks", params={"enabled": "false"}, headers=admin)) == [second]
    bad = await client.get("/v1/webhooks", params={"enabled": "maybe"}, headers=admin)
    assert bad.status_code == 422
    assert problem(bad)["errors"][0]["field"] == "enabled"


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"enabled": "yes"}, "enabled"), ({}, "enabled"), ({"enabled": True, "url": "https://example.com"}, "url")],
    ids=["not a boolean", "missing", "an unknown field"],
)
async def test_a_bad_change_is_refused_naming_its_field(
    client: Client, admin: Headers, clean_database: AsyncEngine, payload: dict[str, Any], field: str
) -> None:
    webhook_id = await subscribe(client, admin, "https://example.com/hook")
    response = await client.patch(f"/v1/webhooks/{webhook_id}", json=payload, headers=admin)
    assert response.status_code == 422
    assert problem(response)["errors"][0]["field"] == field
    assert (await client.patch("/v1/webhooks/999999", json={"enabled": True}, headers=admin)).status_code == 404


async def test_a_delivery_in_flight_when_its_webhook_is_disabled_waits_until_it_is_enabled(
    settings: Settings, admin: Headers, receiver: Receiver, clean_database: AsyncEngine
) -> None:
    """A replica that claimed it and never recorded its outcome leaves it waiting; it is not sent while disabled."""
    app = failing_app(settings, failures=20, days=5)
    clock = FakeClock()
    dispatcher = replace_dispatcher(app, clock=clock)
    async with serve_in_process(app) as client:
        webhook_id = await subscribe(client, admin, receiver.url)
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
        async with app.state.runtime.sessionmaker() as session, session.begin():
            (claimed,) = await WebhookRepository(session).claim_due(clock.now, clock.now + dispatcher.lease, 10)
        await client.patch(f"/v1/webhooks/{webhook_id}", json={"enabled": False}, headers=admin)
        clock.advance(seconds=dispatcher.lease.total_seconds() + 1)  # the claiming replica's lease runs out
        await rounds(dispatcher, clock, 3, seconds=2)
        (waiting,) = await deliveries(client, admin, webhook_id)
        assert receiver.received == []
        await client.patch(f"/v1/webhooks/{webhook_id}", json={"enabled": True}, headers=admin)
        await rounds(dispatcher, clock, 1, seconds=2)
        (delivered,) = await deliveries(client, admin, webhook_id)
    assert (waiting["id"], waiting["status"]) == (claimed.id, "pending")
    assert delivered["status"] == "succeeded"
    assert [b["type"] for b in receiver.bodies()] == ["ping"]
