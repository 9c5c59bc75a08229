"""What a running experiment's results page keeps and drops across its live refresh (``static/live.js``).

A notice after an action ("The experiment is running.") belongs to the page load that followed it: the address loses
it at once, so neither the polls nor a reload carry it. A phase that begins while the page is open joins the phase
selector at the next poll, and a choice the reader made there but did not send stays. The browser's clock stands
still (``still_clock``), so every poll is one the test asked for, and counted.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

import httpx
from playwright.async_api import expect

from tests.console.conftest import Console, LiveRegistry
from tests.console.test_experiment_live import INTERVAL_MS
from tests.console.test_experiment_pages import draft_experiment, running_experiment
from tests.console.test_live_refresh import checked, count_polls, polled, settled, still_clock


async def new_phase(api: httpx.AsyncClient, key: str, treatment_weight: int, phase: int) -> None:
    """New weights on a running experiment: a new phase begins, as any API client may do while the page is open."""
    body = {"weights": {"control": 1, "treatment": treatment_weight}, "reason": f"phase {phase}"}
    changed = await api.patch(f"/v1/experiments/{quote(key, safe='')}", json=body)
    assert changed.status_code == 200, changed.text
    assert changed.json()["phase"] == phase


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


async def test_a_phase_begun_while_the_page_is_open_joins_the_selector_and_the_readers_choice_stays(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        key = await running_experiment(api)
    path = f"/console/experiments/{key}"
    page = await console.signed_in("analyst")
    polls = count_polls(page, f"{path}/live")
    await still_clock(page)
    await page.goto(path)
    root = page.locator("[data-live-url]")
    meta = page.locator("#experiment-meta")
    phase = page.get_by_label("Phase")
    await expect(root).to_have_attribute("data-live-state", "on")
    await expect(meta).to_contain_text("phase 1")
    assert await phase.count() == 0  # one phase: nothing to choose

    async with live.api() as api:
        await new_phase(api, key, treatment_weight=3, phase=2)
    await page.clock.run_for(INTERVAL_MS)
    await settled(page, 1)
    await polled(polls, 1)
    await expect(phase.locator("option")).to_have_text(["1", "2"])
    assert await phase.input_value() == "2"  # no phase in the address: the newest, as the results show
    await expect(meta).to_contain_text("phase 2")
    await expect(page.locator("#download-csv")).to_have_attribute("href", re.compile(r"[?&]phase=2(&|$)"))
    await checked(page, "experiment-live-new-phase", polls)

    # The reader picks phase 1 and has not pressed Show when phase 3 begins: the list grows, the choice and focus stay.
    await phase.focus()
    await phase.select_option("1")
    async with live.api() as api:
        await new_phase(api, key, treatment_weight=5, phase=3)
    await page.clock.run_for(INTERVAL_MS)
    await settled(page, 2)
    await polled(polls, 2)
    await expect(phase.locator("option")).to_have_text(["1", "2", "3"])
    await expect(meta).to_contain_text("phase 3")
    assert await phase.input_value() == "1"
    await expect(phase).to_be_focused()
    await checked(page, "experiment-live-phase-kept", polls)
    await page.get_by_role("button", name="Show").click()
    await expect(meta).to_contain_text("phase 1")
    assert urlsplit(page.url).query == "phase=1"
