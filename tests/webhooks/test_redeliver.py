"""Redelivering a webhook delivery: it starts over from its first attempt, with the same event, and is audited."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.runtime import Runtime
from registry.settings import Settings
from tests.api import Headers
from tests.conftest import KeyFactory, serve_in_process


async def test_a_dead_delivery_redelivered_is_attempted_again_with_the_same_event(
    settings: Settings, admin: Headers, make_key: KeyFactory, clean_database: AsyncEngine
) -> None:
    app = create_app(settings.model_copy(update={"webhook_max_attempts": 2, "webhook_retry_base_seconds": 0.01}))
    runtime: Runtime = app.state.runtime
    async with serve_in_process(app) as client:
        created = await client.post(
            "/v1/webhooks", json={"url": "http://127.0.0.1:9/unreachable", "events": ["*"]}, headers=admin
        )
        webhook_id = created.json()["webhook"]["id"]
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
        for _ in range(3):
            await runtime.webhooks.run_once()
            await asyncio.sleep(0.03)
        (dead,) = (await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=admin)).json()["items"]
        assert (dead["status"], dead["attempts"]) == ("dead", 2)

        reader = await make_key(Scope.READ, Scope.WRITE, Scope.PROMOTE, Scope.ANALYZE, name="everything-but-admin")
        path = f"/v1/webhooks/{webhook_id}/deliveries/{dead['id']}/redeliver"
        assert (await client.post(path, headers=reader)).status_code == 403
        assert (
            (await client.post(f"/v1/webhooks/{webhook_id}/deliveries/999999/redeliver", headers=admin))
            .json()["type"]
            .endswith("webhook_delivery_not_found")
        )

        again = await client.post(path, headers=admin)
        assert again.status_code == 200, again.text
        assert (again.json()["id"], again.json()["event_id"], again.json()["status"], again.json()["attempts"]) == (
            dead["id"],
            dead["event_id"],
            "pending",
            0,
        )
        await runtime.webhooks.run_once()
        (retried,) = (await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=admin)).json()["items"]
        audit = (await client.get("/v1/audit", params={"resource_name": str(webhook_id)}, headers=admin)).json()
    assert (retried["status"], retried["attempts"]) == ("retrying", 1)
    assert audit["items"][0]["action"] == "webhook.redeliver"
    assert audit["items"][0]["before"] == {"delivery": dead["id"], "status": "dead", "attempts": 2}
