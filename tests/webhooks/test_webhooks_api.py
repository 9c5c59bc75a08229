"""Webhooks end to end: signed deliveries from the outbox, retries, the delivery log, several replicas."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar
from prompt_registry_client.webhooks import verify_signature
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.db.base import utcnow
from registry.runtime import Runtime
from registry.settings import Settings
from tests.api import Client, Headers, create_prompt, create_version, promote
from tests.conftest import KeyFactory, count_rows, problem, serve_in_process
from tests.webhooks.conftest import Receiver, replace_dispatcher


def runtime_of(app: Litestar) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


async def subscribe(client: Client, admin: Headers, url: str, events: list[str]) -> dict[str, Any]:
    response = await client.post("/v1/webhooks", json={"url": url, "events": events}, headers=admin)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_promotions_are_delivered_signed(
    app: Litestar, client: Client, admin: Headers, receiver: Receiver
) -> None:
    created = await subscribe(client, admin, receiver.url, ["prompt.*"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    await create_prompt(client, admin, "greeting")
    await create_version(client, admin, "greeting")
    await promote(client, admin, "greeting", 1, reason="launch")
    await runtime_of(app).webhooks.run_once()

    assert [b["type"] for b in receiver.bodies()] == ["prompt.version.created", "prompt.promoted"]
    promoted = receiver.bodies()[1]
    assert promoted["subject"] == "greeting"
    assert promoted["actor"] == "admin"
    assert promoted["data"]["to_state"] == "production"
    assert promoted["data"]["reason"] == "launch"
    for headers, body in receiver.received:
        assert verify_signature(secret, headers["x-registry-signature"], body)
        assert headers["x-registry-event"] in ("prompt.version.created", "prompt.promoted")
    log = (await client.get(f"/v1/webhooks/{created['webhook']['id']}/deliveries", headers=admin)).json()["items"]
    assert [(d["event_type"], d["status"], d["attempts"]) for d in log] == [
        ("prompt.promoted", "succeeded", 1),
        ("prompt.version.created", "succeeded", 1),
    ]


async def test_only_subscribed_events_are_sent(
    app: Litestar, client: Client, admin: Headers, receiver: Receiver
) -> None:
    await subscribe(client, admin, receiver.url, ["prompt.rolled_back"])
    await create_prompt(client, admin, "greeting")
    await create_version(client, admin, "greeting")
    await promote(client, admin, "greeting", 1)
    await runtime_of(app).webhooks.run_once()
    assert receiver.received == []


async def test_failed_deliveries_are_retried_with_backoff_then_succeed(
    settings: Settings, admin: Headers, receiver: Receiver, clean_database: AsyncEngine
) -> None:
    app = create_app(settings.model_copy(update={"webhook_retry_base_seconds": 30, "webhook_retry_max_seconds": 30}))
    receiver.script = [500, 503]
    now = [utcnow()]
    dispatcher = replace_dispatcher(app, clock=lambda: now[0])
    async with serve_in_process(app) as client:
        created = await subscribe(client, admin, receiver.url, ["*"])
        await create_prompt(client, admin, "greeting")
        await create_version(client, admin, "greeting")
        await dispatcher.run_once()
        log = (await client.get(f"/v1/webhooks/{created['webhook']['id']}/deliveries", headers=admin)).json()["items"]
        assert (log[0]["status"], log[0]["attempts"], log[0]["last_status_code"]) == ("retrying", 1, 500)
        now[0] += timedelta(seconds=14)  # the first delay is 15 to 30 s (jitter): not due yet
        await dispatcher.run_once()
        assert len(receiver.received) == 1
        for _ in range(2):
            now[0] += timedelta(seconds=31)
            await dispatcher.run_once()
        log = (await client.get(f"/v1/webhooks/{created['webhook']['id']}/deliveries", headers=admin)).json()["items"]
    assert (log[0]["status"], log[0]["attempts"]) == ("succeeded", 3)
    assert len(receiver.received) == 3
    assert len({json.loads(body)["id"] for _, body in receiver.received}) == 1  # the same event, retried


async def test_deliveries_die_after_the_last_attempt(
    settings: Settings, admin: Headers, clean_database: AsyncEngine
) -> None:
    app = create_app(settings.model_copy(update={"webhook_max_attempts": 2, "webhook_retry_base_seconds": 0.01}))
    async with serve_in_process(app) as client:
        created = await subscribe(client, admin, "http://127.0.0.1:9/unreachable", ["*"])
        await client.post(f"/v1/webhooks/{created['webhook']['id']}/ping", headers=admin)
        for _ in range(3):
            await runtime_of(app).webhooks.run_once()
            await asyncio.sleep(0.03)
        dead = await client.get(
            f"/v1/webhooks/{created['webhook']['id']}/deliveries", params={"status": "dead"}, headers=admin
        )
    (delivery,) = dead.json()["items"]
    assert delivery["attempts"] == 2
    assert "Cannot connect" in delivery["last_error"]


async def test_two_replicas_deliver_each_event_once(
    settings: Settings, admin: Headers, receiver: Receiver, clean_database: AsyncEngine
) -> None:
    first, second = create_app(settings), create_app(settings)
    async with serve_in_process(first) as client, serve_in_process(second):
        await subscribe(client, admin, receiver.url, ["*"])
        await create_prompt(client, admin, "greeting")
        for i in range(10):
            await create_version(client, admin, "greeting", f"v{i} {{{{ name }}}}")
        for _ in range(3):
            await asyncio.gather(runtime_of(first).webhooks.run_once(), runtime_of(second).webhooks.run_once())
    ids = [body["id"] for body in receiver.bodies()]
    assert len(ids) == 10
    assert len(set(ids)) == 10


async def test_a_refused_change_emits_no_event(
    app: Litestar, client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await create_prompt(client, admin, "greeting")
    await create_version(client, admin, "greeting")
    events = await count_rows(clean_database, "outbox_events")
    stale = await client.post(
        "/v1/prompts/greeting/versions/1/promote", json={"to": "production", "expected_current": 7}, headers=admin
    )
    assert stale.status_code == 409
    assert await count_rows(clean_database, "outbox_events") == events


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url"),
        ({"url": "not a url", "events": ["*"]}, "url"),
        ({"url": "http://[zz::1]/x", "events": ["*"]}, "url"),
        ({"url": "http://example.com:port/x", "events": ["*"]}, "url"),
        ({"url": "https://example.com/x", "events": ["prompt.deleted"]}, "events[0]"),
        ({"url": "https://example.com/x", "events": []}, "events"),
    ],
)
async def test_bad_webhooks_are_refused(
    client: Client, admin: Headers, clean_database: AsyncEngine, payload: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/webhooks", json=payload, headers=admin)
    assert response.status_code == 422
    assert problem(response)["errors"][0]["field"] == field
    assert await count_rows(clean_database, "webhooks") == 0


async def test_webhooks_are_admin_only_and_deletable(client: Client, admin: Headers, make_key: KeyFactory) -> None:
    promoter = await make_key(Scope.PROMOTE)
    assert (await client.get("/v1/webhooks", headers=promoter)).status_code == 403
    created = await subscribe(client, admin, "https://example.com/hook", ["*"])
    listed = (await client.get("/v1/webhooks", headers=admin)).json()["items"]
    assert [w["url"] for w in listed] == ["https://example.com/hook"]
    assert "secret" not in listed[0]
    webhook_id = created["webhook"]["id"]
    assert (await client.delete(f"/v1/webhooks/{webhook_id}", headers=admin)).status_code == 204
    assert (await client.get(f"/v1/webhooks/{webhook_id}", headers=admin)).status_code == 404
    audit = (await client.get("/v1/audit", params={"resource_type": "webhook"}, headers=admin)).json()["items"]
    assert [e["action"] for e in audit] == ["webhook.delete", "webhook.create"]


async def test_experiment_start_and_stop_are_delivered(
    app: Litestar, client: Client, admin: Headers, receiver: Receiver
) -> None:
    from tests.experiments.conftest import make_experiment, make_metric, make_prompt

    await subscribe(client, admin, receiver.url, ["experiment.*"])
    await make_prompt(client, admin, "greeting")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "tone", "greeting")
    stop = {"winner": "treatment", "reason": "treatment wins"}
    stopped = await client.post("/v1/experiments/tone/stop", json=stop, headers=admin)
    assert stopped.status_code == 200, stopped.text
    await runtime_of(app).webhooks.run_once()
    bodies = receiver.bodies()
    assert [b["type"] for b in bodies] == ["experiment.started", "experiment.stopped"]
    assert bodies[1]["data"]["winner"] == "treatment"
    assert bodies[1]["data"]["promoted_version"] == 2
