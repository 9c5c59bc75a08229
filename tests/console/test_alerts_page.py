"""The alerts page (admin only): the incidents, newest first, with the value that fired and the threshold,
and every rule with what it watches."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import complete, prompt_on_fault_backend, unique


async def firing_incident(live: LiveRegistry, rule: str) -> dict[str, Any]:
    """Wait (the live registry evaluates every 0.5 s, and writes completions every 2 s) for the rule to fire."""
    async with live.api() as api:
        for _ in range(100):
            found = (await api.get("/v1/alerts/incidents", params={"status": "firing"})).json()["items"]
            mine = [i for i in found if i["rule"] == rule]
            if mine:
                return mine[0]
            await asyncio.sleep(0.2)
    raise AssertionError(f"{rule} did not fire")


async def test_the_alerts_page_shows_a_firing_incident_and_the_rules(console: Console, live: LiveRegistry) -> None:
    prompt = unique("alerted")
    cost_rule = unique("spend")
    async with live.api() as api:
        await prompt_on_fault_backend(api, prompt, prices=(1000.0, 1000.0))
        rules = [
            {"name": cost_rule, "kind": "cost_per_hour", "threshold": 0.0001, "scope": {"prompt": prompt}},
            {
                "name": unique("rollbacks"),
                "kind": "rollout_rolled_back",
                "threshold": 1,
                "window_seconds": 900,
                "description": "Any rollout rolled back by its guardrails",
            },
        ]
        ids = []
        for rule in rules:
            created = await api.post("/v1/alerts/rules", json=rule)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        await complete(api, prompt, 3)
    try:
        incident = await firing_incident(live, cost_rule)
        page = await console.signed_in("admin")
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Alerts").click()
        incidents = await page.locator("#incidents").inner_text()
        assert cost_rule in incidents
        assert "firing" in incidents
        rules_shown = await page.locator("#rules").inner_text()
        assert all(r["name"] in rules_shown for r in rules)
        assert "Any rollout rolled back by its guardrails" in rules_shown
        await check_page(page, "alerts")
        await page.get_by_label("Show incidents").select_option("resolved")
        await page.get_by_role("button", name="Filter").click()
        assert await page.locator("#no-incidents").inner_text() == "No incident is resolved."  # it still fires
        assert incident["status"] == "firing"
    finally:
        async with live.api() as api:
            for rule_id in ids:
                assert (await api.delete(f"/v1/alerts/rules/{rule_id}")).status_code == 204


async def test_a_key_without_admin_does_not_see_alerts(console: Console, live: LiveRegistry) -> None:
    page = await console.signed_in("analyst")
    assert await page.get_by_role("navigation", name="Main").get_by_role("link", name="Alerts").count() == 0
    opened = await page.goto("/console/alerts")
    assert opened is not None
    assert opened.status == 403
