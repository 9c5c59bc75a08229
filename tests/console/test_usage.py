"""The usage page: totals equal ``GET /v1/usage`` for the same days, stacked by prompt or by key; budgets for admins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from registry.console.formatting import cost, count, percent
from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import complete, prompt_on_fault_backend, unique


async def api_totals(api: httpx.AsyncClient, days: int) -> dict[str, Any]:
    """Requests, tokens and cost over the last ``days`` days (UTC, today included), from the API."""
    today = datetime.now(UTC).date()
    response = await api.get(
        "/v1/usage", params={"since": str(today - timedelta(days=days - 1)), "until": str(today), "group_by": "day"}
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    return {
        "requests": count(sum(i["requests"] for i in items)),
        "tokens": count(sum(i["input_tokens"] + i["output_tokens"] for i in items)),
        "cost": cost(sum(i["cost"] for i in items)),
    }


async def shown_totals(page: Any) -> dict[str, str]:
    totals = page.locator("#usage-totals")
    names = ("requests", "tokens", "cost")
    return {name: await totals.locator(f"[data-total='{name}']").inner_text() for name in names}


async def group_labels(page: Any) -> list[str]:
    return [
        (await cell.inner_text()).splitlines()[0].strip() for cell in await page.locator("#usage-groups tbody th").all()
    ]


async def test_the_usage_page_totals_match_the_usage_api(console: Console, live: LiveRegistry) -> None:
    first, second = unique("usage/summarize"), unique("usage/translate")
    async with live.api() as api, live.api("alice") as alice, live.api("reader") as reader:
        await prompt_on_fault_backend(api, first, prices=(1000.0, 2000.0))
        await prompt_on_fault_backend(api, second, prices=(500.0, 500.0))
        await complete(alice, first, 3)
        await complete(reader, second, 2)
    page = await console.signed_in("analyst")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").click()
    async with live.api() as api:
        assert await shown_totals(page) == await api_totals(api, 30)
    labels = await group_labels(page)
    assert first in labels
    assert second in labels
    chart = page.get_by_role("img", name="Tokens per day by prompt")
    assert await chart.count() == 1
    assert await page.locator("svg title").filter(has_text=first).count() >= 1  # each segment names its prompt
    assert await page.get_by_role("region", name="Budgets this month").count() == 0  # budgets are for admins
    await check_page(page, "usage")

    await page.get_by_role("link", name="By key").click()
    await page.get_by_role("link", name="7 days").click()
    assert "by=key" in page.url
    assert "days=7" in page.url
    async with live.api() as api:
        assert await shown_totals(page) == await api_totals(api, 7)
    labels = await group_labels(page)
    assert any(label.startswith(("alice", live.keys["alice"].split("_")[1])) for label in labels)
    assert await page.get_by_role("img", name="Cost per day by API key").count() == 1


async def test_admins_see_key_names_and_the_share_of_each_budget(console: Console, live: LiveRegistry) -> None:
    name = unique("usage/budgeted")
    alice_id = live.keys["alice"].split("_")[1]
    async with live.api() as api, live.api("alice") as alice:
        await prompt_on_fault_backend(api, name, prices=(1000.0, 1000.0))
        await complete(alice, name, 2)
        assert (await api.put(f"/v1/keys/{alice_id}/budget", json={"monthly_tokens": 1000})).status_code == 200
        budget = (await api.get(f"/v1/keys/{alice_id}/budget")).json()
    page = await console.signed_in("admin")
    await page.goto("/console/usage?by=key")
    assert f"alice ({alice_id})" in await group_labels(page)
    budgets = page.get_by_role("region", name="Budgets this month")
    row = budgets.get_by_role("row").filter(has_text=alice_id)
    text = " ".join((await row.inner_text()).split())
    assert f"{count(budget['used_tokens'])} of {count(1000)}" in text
    assert percent(budget["used_tokens"] / 1000) in text
    await check_page(page, "usage-by-key")


async def test_a_key_without_analyze_sees_no_usage_link_and_is_refused(console: Console, live: LiveRegistry) -> None:
    page = await console.signed_in("reader")
    assert await page.get_by_role("navigation", name="Main").get_by_role("link", name="Usage").count() == 0
    opened = await page.goto("/console/usage")
    assert opened is not None
    assert opened.status == 403
