"""The alerts page shows the rules two hundred at a time, and turns to the others.

The page read two hundred rules (and the one past them) and showed those: rules created later were on no console page,
and no line said more existed.
"""

from __future__ import annotations

import re
from html import unescape

import httpx

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import unique
from tests.console.test_dec6_refused_forms import sign_in

SHOWN = 200


def rule_names(html: str, prefix: str) -> list[str]:
    return re.findall(rf'<th scope="row">({re.escape(prefix)}-\d+)', html)


async def rule_count(api: httpx.AsyncClient) -> int:
    count, cursor = 0, None
    while True:
        listed = await api.get("/v1/alerts/rules", params={"limit": 100, **({"cursor": cursor} if cursor else {})})
        assert listed.status_code == 200, listed.text
        count += len(listed.json()["items"])
        cursor = listed.json()["next_cursor"]
        if cursor is None:
            return count


def rule_rows(html: str) -> int:
    """The rows of the rules table (the incidents table above it has row headings too)."""
    table = html.split('<table class="table" id="rules">', 1)[1].split("</table>", 1)[0]
    return len(re.findall(r'<th scope="row">', table))


def link(html: str, text: str) -> str | None:
    found = re.search(rf'<a class="button" href="([^"]+)">{re.escape(text)}', html)
    return unescape(found.group(1)) if found else None


async def test_rules_past_the_first_two_hundred_are_a_page_away(console: Console, live: LiveRegistry) -> None:
    prefix = unique("quiet")
    ids = []
    try:
        async with live.api() as api:
            existing = await rule_count(api)
            # Disabled, so the live registry's evaluator leaves them alone.
            for i in range(SHOWN + 2 - existing):
                created = await api.post(
                    "/v1/alerts/rules",
                    json={"name": f"{prefix}-{i:03}", "kind": "error_rate", "threshold": 0.5, "enabled": False},
                )
                assert created.status_code == 201, created.text
                ids.append(created.json()["id"])
        names = [f"{prefix}-{i:03}" for i in range(len(ids))]
        async with live.http() as client:
            await sign_in(client, live.keys["admin"])
            first = await client.get("/console/alerts")
            assert first.status_code == 200
            assert rule_rows(first.text) == SHOWN
            shown_first = rule_names(first.text, prefix)
            assert link(first.text, "← First rules") is None
            more = link(first.text, "More rules →")
            assert more is not None
            assert more.startswith("/console/alerts?rules=")

            rest = await client.get(more.split("#", 1)[0])
            assert rest.status_code == 200
            assert rule_rows(rest.text) == 2
            assert shown_first + rule_names(rest.text, prefix) == names  # every rule, oldest first, once
            assert link(rest.text, "More rules →") is None
            assert link(rest.text, "← First rules") == "/console/alerts#rules-heading"

            forged = await client.get("/console/alerts", params={"rules": "not-a-cursor"})
            assert forged.status_code == 400
            assert "cursor" in forged.text

        page = await console.signed_in("admin")
        await page.goto("/console/alerts")
        await page.get_by_role("navigation", name="Rules pages").get_by_role("link", name="More rules →").click()
        await page.wait_for_url("**rules=**")
        assert await page.locator("#rules tbody tr").count() == 2
        await check_page(page, "console_alerts_more_rules")
    finally:
        async with live.api() as api:
            for rule_id in ids:
                assert (await api.delete(f"/v1/alerts/rules/{rule_id}")).status_code == 204
