"""A prompt's page shows its history fifty changes at a time, and turns to the older ones.

The history showed the newest fifty state changes and nothing else: older changes (who first put a version in
production, and why) were out of the console's reach, and no line said so.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import quote

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import create_prompt, create_version, promote, unique
from tests.console.test_dec6_refused_forms import sign_in

SHOWN = 50


def history_rows(html: str) -> list[tuple[int, str]]:
    """(version, action) of each history entry, in page order."""
    return [
        (int(number), action)
        for action, number in re.findall(
            r'<li class="timeline-item timeline-([a-z_]+)">\s*<div class="timeline-what"><span class="strong">v(\d+)',
            html,
        )
    ]


def link(html: str, text: str) -> str | None:
    found = re.search(rf'<a class="button" href="([^"]+)">{re.escape(text)}', html)
    return unescape(found.group(1)) if found else None


async def prompt_with_long_history(live: LiveRegistry) -> tuple[str, list[tuple[int, str]]]:
    """A prompt whose versions went to staging one after another: more than fifty changes; with the API's history."""
    prompt = unique("long/history")
    async with live.api() as api:
        await create_prompt(api, prompt)
        expected = None
        for i in range(1, 32):
            await create_version(api, prompt, f"Hello {{{{ name }}}} {i}")
            await promote(api, prompt, i, "staging", expected)
            expected = i
        listed = await api.get(f"/v1/prompts/{quote(prompt, safe='')}/history", params={"limit": 200})
    assert listed.status_code == 200, listed.text
    every = [(item["version"], item["action"]) for item in listed.json()["items"]]
    assert SHOWN < len(every) < 2 * SHOWN
    return prompt, every


async def test_history_past_the_fifty_newest_changes_is_a_page_away(live: LiveRegistry) -> None:
    prompt, every = await prompt_with_long_history(live)
    base = f"/console/prompts/{quote(prompt, safe='')}"
    async with live.http() as client:
        await sign_in(client, live.keys["alice"])
        newest = await client.get(base)
        assert newest.status_code == 200
        assert history_rows(newest.text) == every[:SHOWN]
        assert link(newest.text, "← Newest changes") is None
        older = link(newest.text, "Older changes →")
        assert older is not None
        assert older.startswith(f"{base}?history=")
        assert older.endswith("#history-title")

        rest = await client.get(older.split("#", 1)[0])
        assert rest.status_code == 200
        assert history_rows(rest.text) == every[SHOWN:]  # the oldest change, v1 into staging, among them
        assert every[-1][0] == 1
        assert link(rest.text, "Older changes →") is None
        assert link(rest.text, "← Newest changes") == f"{base}#history-title"

        forged = await client.get(base, params={"history": "not-a-cursor"})
        assert forged.status_code == 400
        assert "cursor" in forged.text


async def test_the_history_pager_keeps_the_versions_page_and_shows_on_screen(
    console: Console, live: LiveRegistry
) -> None:
    prompt, every = await prompt_with_long_history(live)
    page = await console.signed_in("reader")
    await page.goto(f"/console/prompts/{quote(prompt, safe='')}")
    pager = page.get_by_role("navigation", name="History pages")
    await pager.get_by_role("link", name="Older changes →").click()
    await page.wait_for_url("**history=**")
    assert await page.locator(".timeline-item").count() == len(every) - SHOWN
    await check_page(page, "console_prompt_history_older")
    await page.get_by_role("navigation", name="History pages").get_by_role("link", name="← Newest changes").click()
    await page.wait_for_url(lambda url: "history=" not in url)
    assert await page.locator(".timeline-item").count() == SHOWN
