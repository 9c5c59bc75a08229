"""Webhooks in the console (admin only): the list, a webhook's deliveries, and redelivering one."""

from __future__ import annotations

from typing import Any

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import unique


async def webhook_with_a_delivery(live: LiveRegistry, description: str) -> tuple[int, str, dict[str, Any]]:
    """A webhook on the fault server (it answers 404) and the ping delivery queued for it."""
    url = f"{live.fault_url}/hooks/{unique('receiver')}"
    async with live.api() as api:
        created = await api.post("/v1/webhooks", json={"url": url, "events": ["prompt.*"], "description": description})
        assert created.status_code == 201, created.text
        webhook_id: int = created.json()["webhook"]["id"]
        assert (await api.post(f"/v1/webhooks/{webhook_id}/ping")).status_code == 202
        (delivery,) = (await api.get(f"/v1/webhooks/{webhook_id}/deliveries")).json()["items"]
    return webhook_id, url, delivery


async def test_redeliver_a_delivery_from_the_webhook_page(console: Console, live: LiveRegistry) -> None:
    webhook_id, url, delivery = await webhook_with_a_delivery(live, "Tells the search index about new versions")
    page = await console.signed_in("admin")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    await check_page(page, "webhooks")
    await page.get_by_role("link", name=url).click()
    deliveries = page.get_by_role("region", name="Deliveries")
    assert "ping" in await deliveries.inner_text()
    await check_page(page, "webhook")

    await page.get_by_role("button", name=f"Redeliver delivery {delivery['id']}").click()
    assert await page.get_by_role("status").inner_text() == f"Delivery {delivery['id']} will be sent again shortly."
    async with live.api() as api:
        (again,) = (await api.get(f"/v1/webhooks/{webhook_id}/deliveries")).json()["items"]
        audit = (await api.get("/v1/audit", params={"resource_name": str(webhook_id)})).json()["items"]
    assert (again["id"], again["event_id"], again["status"], again["attempts"]) == (
        delivery["id"],
        delivery["event_id"],
        "pending",
        0,
    )
    assert (audit[0]["action"], audit[0]["actor"]) == ("webhook.redeliver", "admin")


async def test_a_key_without_admin_cannot_see_webhooks_or_redeliver(console: Console, live: LiveRegistry) -> None:
    webhook_id, _, delivery = await webhook_with_a_delivery(live, "")
    page = await console.signed_in("alice")
    opened = await page.goto(f"/console/webhooks/{webhook_id}")
    assert opened is not None
    assert opened.status == 403
    await page.goto("/console/prompts")
    csrf = await page.locator("input[name=csrf]").first.input_value()
    forged = await page.request.post(
        f"/console/webhooks/{webhook_id}/deliveries/{delivery['id']}/redeliver", form={"csrf": csrf}, max_redirects=0
    )
    assert forged.status == 403
    async with live.api() as api:
        audit = (await api.get("/v1/audit", params={"resource_name": str(webhook_id)})).json()["items"]
    assert "webhook.redeliver" not in [e["action"] for e in audit]


async def test_disable_and_enable_a_webhook_from_its_page(console: Console, live: LiveRegistry) -> None:
    webhook_id, url, delivery = await webhook_with_a_delivery(live, "")
    page = await console.signed_in("admin")
    await page.goto(f"/console/webhooks/{webhook_id}")
    await page.get_by_role("button", name="Disable webhook").click()
    assert await page.get_by_role("status").inner_text() == (
        "The webhook is disabled: nothing is sent to it until it is enabled."
    )
    assert "disabled by admin" in await page.get_by_role("region", name="Disabled").inner_text()
    assert await page.get_by_role("button", name=f"Redeliver delivery {delivery['id']}").count() == 0
    await check_page(page, "webhook-disabled")
    async with live.api() as api:
        disabled = (await api.get(f"/v1/webhooks/{webhook_id}")).json()
    await page.goto("/console/webhooks")
    assert "disabled" in await page.get_by_role("row").filter(has_text=url).inner_text()

    await page.goto(f"/console/webhooks/{webhook_id}")
    await page.get_by_role("button", name="Enable webhook").click()
    assert await page.get_by_role("status").inner_text() == (
        "The webhook is enabled: events from now on are delivered."
    )
    async with live.api() as api:
        enabled = (await api.get(f"/v1/webhooks/{webhook_id}")).json()
        audit = (await api.get("/v1/audit", params={"resource_name": str(webhook_id)})).json()["items"]
    assert (disabled["enabled"], disabled["disabled_reason"]) == (False, "disabled by admin")
    assert (enabled["enabled"], enabled["disabled_at"]) == (True, None)
    assert [(e["action"], e["actor"]) for e in audit[:2]] == [("webhook.enable", "admin"), ("webhook.disable", "admin")]
