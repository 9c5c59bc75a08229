"""Experiments in the console: the list, and a results page with the numbers ``GET .../results`` returns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from registry.console.formatting import count, estimate, p_value, percent, signed_percent
from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import create_prompt, create_version, promote, unique

UNITS = 40
MAX_POLLS = 400
DASH = "\N{EN DASH}"  # between the ends of an interval


async def settled_results(api: httpx.AsyncClient, key: str) -> dict[str, Any]:
    """The results once every exposure and event is folded in (the server flushes and aggregates every 0.1 s)."""
    for _ in range(MAX_POLLS):
        results: dict[str, Any] = (await api.get(f"/v1/experiments/{key}/results")).json()
        if results.get("units") == UNITS and results.get("pending_units") == 0 and results["metrics"]:
            return results
        await asyncio.sleep(0.05)
    raise AssertionError(f"results never settled: {results}")


async def run_experiment(api: httpx.AsyncClient) -> str:
    prompt, key, metric = unique("checkout/cta"), unique("cta-test"), unique("clicked")
    await create_prompt(api, prompt)
    await create_version(api, prompt, "Buy {{ item }} now")
    await create_version(api, prompt, "Get {{ item }} today")
    await promote(api, prompt, 1, "production", None)
    assert (await api.post("/v1/metrics", json={"key": metric, "kind": "binomial"})).status_code == 201
    experiment = {
        "key": key,
        "prompt": prompt,
        "description": "Does a softer call to action get more clicks?",
        "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
        "primary_metric": metric,
    }
    assert (await api.post("/v1/experiments", json=experiment)).status_code == 201, key
    assert (await api.post(f"/v1/experiments/{key}/start")).status_code == 200
    for i in range(UNITS):  # the service assigns each unit its variant as it renders for it
        rendered = await api.post(
            f"/v1/prompts/{quote(prompt, safe='')}/render", json={"variables": {"item": "socks"}, "unit": f"user-{i}"}
        )
        assert rendered.status_code == 200, rendered.text
    now = datetime.now(UTC).isoformat()
    events = [
        {"unit": f"user-{i}", "metric": metric, "idempotency_key": f"{key}-{i}", "timestamp": now, "experiment": key}
        for i in range(0, UNITS, 3)
    ]
    assert (await api.post("/v1/events", json={"events": events})).json()["accepted"] == len(events)
    return key


def expected_row(variant: dict[str, Any], *, control: bool) -> list[str]:
    """A metric row as the page must show it, from the API's numbers (``control``: the first variant's)."""
    cells = [variant["variant"], count(variant["units"]), estimate(variant["mean"])]
    cells.append(f"{estimate(variant['ci_low'])} {DASH} {estimate(variant['ci_high'])}")
    versus = variant["vs_control"]
    if versus is None:  # nothing to compare: the control itself, or a variant without enough data
        return [
            *cells,
            "control: the baseline the others are compared with" if control else "not compared with control yet",
        ]
    effect = versus["relative"] or versus["absolute"]
    show = signed_percent if versus["relative"] else estimate
    effect_text = show(effect["estimate"]) + (" significant" if versus["significant"] else "")
    return [
        *cells,
        effect_text,
        f"{show(effect['ci_low'])} {DASH} {show(effect['ci_high'])}",
        p_value(versus["p_value_adjusted"]),
        percent(versus["chance_to_beat_control"]),
    ]


async def table_rows(section: Any) -> list[list[str]]:
    rows = []
    for row in await section.locator("tbody tr").all():
        rows.append([" ".join((await cell.inner_text()).split()) for cell in await row.locator("th, td").all()])
    return rows


async def test_the_results_page_shows_the_numbers_of_the_results_api(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        key = await run_experiment(api)
        results = await settled_results(api, key)
    page = await console.signed_in("analyst")
    await page.get_by_role("link", name="Experiments").click()
    await page.get_by_label("Status").select_option("running")
    await page.get_by_role("button", name="Filter").click()
    await check_page(page, "experiments")
    await page.get_by_role("link", name=key).click()

    assert "The split is healthy" in await page.get_by_role("status").inner_text()
    units = page.get_by_role("region", name="Units per variant")
    assert await table_rows(units) == [
        [v["variant"], count(v["units"]), percent(v["expected_share"]), percent(v["observed_share"])]
        for v in results["variants"]
    ]
    (metric,) = results["metrics"]
    shown = page.get_by_role("region", name=metric["metric"])
    assert await table_rows(shown) == [expected_row(v, control=i == 0) for i, v in enumerate(metric["variants"])]
    await check_page(page, "experiment-results")


async def test_a_key_without_analyze_sees_the_list_but_not_the_results(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        key = await run_experiment(api)
    page = await console.signed_in("reader")
    await page.goto("/console/experiments")
    assert await page.get_by_text(key, exact=True).count() == 1
    assert await page.get_by_role("link", name=key).count() == 0
    opened = await page.goto(f"/console/experiments/{key}")
    assert opened is not None
    assert opened.status == 403
