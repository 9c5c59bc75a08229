"""A running experiment's results page refreshes itself (``static/live.js``); a stopped one's carries no script.

The browser's clock is Playwright's and stands still (``still_clock``): a poll happens only when the test moves the
clock on by the page's interval, so every poll is counted. Exposures and events go through the API as any client
sends them; the console tests' registry folds them into the results every 0.1 s, and each test waits for the
results API to show them before it moves the page's clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.async_api import expect

from registry.console.experiments import results_refresh_ms
from registry.console.formatting import count, percent
from registry.settings import Settings
from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import unique
from tests.console.test_experiment_pages import prompt_and_metric
from tests.console.test_experiments import table_rows
from tests.console.test_live_refresh import checked, count_polls, polled, settled, still_clock
from tests.waiting import eventually_async

# The console's floor: the console tests' registry recomputes results every 0.1 s, far more often.
INTERVAL_MS = results_refresh_ms(
    console_seconds=Settings.model_fields["console_experiment_refresh_seconds"].default, statistics_seconds=0.1
)


async def running_in_second_phase(api: httpx.AsyncClient) -> tuple[str, str, str]:
    """A running experiment in its second phase (new weights), so its page has a phase selector."""
    prompt, metric = await prompt_and_metric(api)
    key = unique("live-results")
    body = {
        "key": key,
        "prompt": prompt,
        "variants": [
            {"key": "control", "prompt_version": 1, "weight": 0.4},
            {"key": "treatment", "prompt_version": 2, "weight": 0.6},
        ],
        "primary_metric": metric,
    }
    assert (await api.post("/v1/experiments", json=body)).status_code == 201
    assert (await api.post(f"/v1/experiments/{key}/start")).status_code == 200
    even = {"weights": {"control": 1, "treatment": 1}, "reason": "even split"}
    changed = await api.patch(f"/v1/experiments/{key}", json=even)
    assert changed.status_code == 200, changed.text
    assert changed.json()["phase"] == 2
    return prompt, metric, key


async def expose_and_record(api: httpx.AsyncClient, prompt: str, metric: str, key: str, units: range) -> None:
    """Render for each unit (the service assigns and logs its variant), and an outcome for every other one."""
    for i in units:
        rendered = await api.post(
            f"/v1/prompts/{quote(prompt, safe='')}/render", json={"variables": {"name": "Ada"}, "unit": f"user-{i}"}
        )
        assert rendered.status_code == 200, rendered.text
    now = datetime.now(UTC).isoformat()
    events = [
        {"unit": f"user-{i}", "metric": metric, "idempotency_key": f"{key}-{i}", "timestamp": now, "experiment": key}
        for i in units
        if i % 2 == 0
    ]
    recorded = await api.post("/v1/events", json={"events": events})
    assert recorded.json()["accepted"] == len(events), recorded.text


async def results_with(api: httpx.AsyncClient, key: str, units: int) -> dict[str, Any]:
    """The results once ``units`` units and their events are folded in."""
    latest: dict[str, Any] = {}

    async def folded() -> bool:
        nonlocal latest
        latest = (await api.get(f"/v1/experiments/{key}/results")).json()
        return bool(latest.get("units") == units and latest.get("pending_units") == 0 and latest["metrics"])

    await eventually_async(folded, f"results of {key} with {units} units")
    return latest


def unit_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [v["variant"], count(v["units"]), percent(v["expected_share"]), percent(v["observed_share"])]
        for v in results["variants"]
    ]


async def test_a_running_experiments_results_refresh_in_place_then_show_the_stop_and_poll_no_more(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        prompt, metric, key = await running_in_second_phase(api)
        await expose_and_record(api, prompt, metric, key, range(10))
        first = await results_with(api, key, 10)
    path = f"/console/experiments/{key}"
    page = await console.signed_in("analyst")
    polls = count_polls(page, f"{path}/live")
    await still_clock(page)
    await page.goto(f"{path}?phase=2")
    root = page.locator("[data-live-url]")
    await expect(root).to_have_attribute("data-live-interval", str(INTERVAL_MS))
    assert INTERVAL_MS == 10_000
    note = page.locator("#experiment-live-note")
    assert await note.get_attribute("aria-live") == "polite"
    assert await page.get_by_role("status").count() == 1  # the note only: the banners and tables are not announced
    assert not first["srm"]["flagged"]
    await expect(note).to_have_text(
        "This experiment is running, with 10 units so far. The split is healthy. "
        "This page updates as results are recomputed.",
        use_inner_text=True,
    )
    units = page.get_by_role("region", name="Units per variant")
    assert await table_rows(units) == unit_rows(first)
    await checked(page, "experiment-live-running", polls)

    # A reader opened the table of points and scrolled down; the phase they chose stays chosen.
    await page.locator("#over-time-summary").click()
    await page.evaluate("window.scrollTo(0, 400)")
    scrolled = await page.evaluate("window.scrollY")
    assert scrolled > 0
    await page.evaluate("window.keptSinceLoad = true")  # gone if the page were loaded again
    async with live.api() as api:
        await expose_and_record(api, prompt, metric, key, range(10, 24))
        second = await results_with(api, key, 24)
    before = len(polls)
    answered = int(await root.get_attribute("data-live-polls") or 0)
    await page.clock.run_for(INTERVAL_MS)
    await expect(page.locator("#units-total")).to_have_text(count(24))
    await settled(page, answered + 1)
    await polled(polls, before + 1)
    assert urlsplit(polls[-1]).query == "phase=2"
    assert await table_rows(units) == unit_rows(second)
    (shown,) = second["metrics"]
    metric_rows = await table_rows(page.get_by_role("region", name=shown["metric"]))
    assert [row[:2] for row in metric_rows] == [[v["variant"], count(v["units"])] for v in shown["variants"]]
    await expect(note).to_contain_text("with 24 units so far")
    await expect(page.locator("#over-time-summary")).to_be_focused()
    await expect(page.locator("#over-time-details")).to_have_attribute("open", "")
    assert await page.evaluate("window.scrollY") == scrolled
    assert await page.evaluate("window.keptSinceLoad") is True
    assert await page.locator("#phase").input_value() == "2"
    await expect(root).to_have_attribute("data-live-state", "on")
    await checked(page, "experiment-live-refreshed", polls)

    # Stopped through the API: the next poll shows it, says so politely, and is the last.
    async with live.api() as api:
        stopped = await api.post(f"/v1/experiments/{key}/stop", json={"reason": "enough data"})
        assert stopped.status_code == 200, stopped.text
    answered = int(await root.get_attribute("data-live-polls") or 0)
    ended = len(polls) + 1
    await page.clock.run_for(INTERVAL_MS)
    await settled(page, answered + 1)
    await polled(polls, ended)
    await expect(root).to_have_attribute("data-live-state", "ended")
    await expect(page.locator("#experiment-status")).to_have_text("stopped")
    await expect(note).to_have_text("This experiment is stopped, with 24 units. This page no longer updates.")
    await page.clock.run_for(INTERVAL_MS * 30)
    assert len(polls) == ended
    await page.clock.resume()  # axe times its own work; the page has no timer left
    await check_page(page, "experiment-live-stopped")


async def test_a_stopped_experiments_results_page_carries_no_live_script(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        prompt, metric, key = await running_in_second_phase(api)
        await expose_and_record(api, prompt, metric, key, range(6))
        await results_with(api, key, 6)
        assert (await api.post(f"/v1/experiments/{key}/stop", json={})).status_code == 200
    path = f"/console/experiments/{key}"
    page = await console.signed_in("analyst")
    polls = count_polls(page, f"{path}/live")
    await still_clock(page)
    await page.goto(path)
    await expect(page.locator("h1")).to_contain_text("stopped")
    assert await page.locator("script[src$='live.js']").count() == 0
    assert await page.locator("[data-live-url]").count() == 0
    assert await page.locator("#experiment-live-note").count() == 0
    assert "The split is healthy" in await page.get_by_role("status").inner_text()
    await page.clock.run_for(INTERVAL_MS * 30)
    assert polls == []
    await page.clock.resume()
    await check_page(page, "experiment-live-stopped-page")


@pytest.mark.parametrize(
    ("console_seconds", "statistics_seconds", "expected_ms"),
    [(10.0, 0.1, 10_000), (10.0, 2.0, 10_000), (10.0, 30.0, 30_000), (1.0, 2.5, 2_500)],
    ids=[
        "the-floor-over-fast-statistics",
        "the-floor-over-default-statistics",
        "statistics-slower-than-the-floor",
        "a-lower-floor-still-not-faster-than-statistics",
    ],
)
def test_results_refresh_no_faster_than_the_floor_nor_the_statistics(
    console_seconds: float, statistics_seconds: float, expected_ms: int
) -> None:
    assert results_refresh_ms(console_seconds=console_seconds, statistics_seconds=statistics_seconds) == expected_ms
