"""What a running experiment's results page keeps and drops across its live refresh (``static/live.js``).

A notice after an action ("The experiment is running.") belongs to the page load that followed it: the address loses
it at once, so neither the polls nor a reload carry it. The browser's clock stands still (``still_clock``), so every
poll is one the test asked for, and counted.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.async_api import expect

from tests.console.conftest import Console, LiveRegistry
from tests.console.test_experiment_live import INTERVAL_MS
from tests.console.test_experiment_pages import draft_experiment
from tests.console.test_live_refresh import checked, count_polls, polled, settled, still_clock


async def test_the_notice_after_starting_shows_once_and_neither_the_polls_nor_a_reload_carry_it(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        key = await draft_experiment(api, "live-notice")
    path = f"/console/experiments/{key}"
    page = await console.signed_in("admin")
    polls = count_polls(page, f"{path}/live")
    await still_clock(page)
    await page.goto(f"{path}/start")
    await page.get_by_role("button", name="Start experiment").click()
    notice = page.locator("p.notice")
    root = page.locator("[data-live-url]")
    await expect(notice).to_have_text("The experiment is running.")  # on the load that followed the action
    await expect(root).to_have_attribute("data-live-state", "on")
    assert urlsplit(page.url).path == path
    assert urlsplit(page.url).query == ""
    await checked(page, "experiment-live-notice-once", polls)

    await page.clock.run_for(INTERVAL_MS)
    await settled(page, 1)
    await polled(polls, 1)
    assert urlsplit(polls[-1]).query == ""
    await expect(notice).to_have_text("The experiment is running.")  # the refresh leaves the page's banner be

    await page.reload()
    await expect(root).to_have_attribute("data-live-state", "on")
    assert await notice.count() == 0

    # Only the notice goes: the phase chosen stays in the address and in the polls.
    await page.goto(f"{path}?phase=1&notice=started")
    await expect(root).to_have_attribute("data-live-state", "on")
    await expect(notice).to_have_text("The experiment is running.")
    assert urlsplit(page.url).query == "phase=1"
    before = len(polls)
    await page.clock.run_for(INTERVAL_MS)
    await settled(page, 1)
    await polled(polls, before + 1)
    assert urlsplit(polls[-1]).query == "phase=1"
