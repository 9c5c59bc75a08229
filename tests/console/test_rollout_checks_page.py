"""The rollout page after real checks: completions through the registry against the stand-in backend, the
checker run between them on a fake clock (``tests/rollouts/simulation.py``), and the page in Chromium.

Each guardrail's plot has a point per check the page has a record of (every check that moved the rollout,
and the latest) and the tolerance line; a rolled-back rollout shows its reason and the failed check.
Unlike the other console tests this one serves its own registry (PostgreSQL, the tests' Redis) on the
tests' event loop, since the checker and the background work run here, on demand.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import AppClient, serve_over_http
from tests.console.conftest import Console, LiveRegistry, check_page
from tests.experiments.conftest import fault as fault  # the stand-in backend
from tests.rollouts.simulation import ERRORS_GUARDRAIL, LATENCY_GUARDRAIL, Simulation, create_metrics

LATENCY = "latency:5:25"  # both sides answer in 5 to 25 ms


@pytest.fixture
def settings(settings: Settings, fault: str) -> Settings:
    """The stand-in backend; background flushes, aggregation and checks only when the test asks."""
    return settings.model_copy(
        update={
            "backends": {"stand-in": backend(fault, max_retries=0, breaker_failures=1_000_000)},
            "experiment_exposure_flush_seconds": 3600.0,
            "experiment_statistics_seconds": 3600.0,
            "rollout_check_seconds": 3600.0,
            "completion_usage_flush_seconds": 3600.0,
        }
    )


@pytest.fixture
async def served(client: AppClient, admin: dict[str, str], browser: Any, fault: str) -> AsyncIterator[Console]:
    """The test's registry over HTTP, and a browser console on it signed in with the admin key."""
    async with serve_over_http(client.app) as url:
        key = admin["Authorization"].removeprefix("Bearer ")
        console = Console(browser, LiveRegistry(url=url, keys={"admin": key}, fault_url=fault))
        yield console
        await console.close()
        assert console.watch.events == [], "a page ran script or reported errors"


async def simulated(client: AppClient, headers: dict[str, str], prompt: str, errors: tuple[float, float]) -> Simulation:
    """Prompt ``prompt`` whose production and candidate fail the given shares of completions (fixed streams: the
    stand-in's model names carry the prompt's name, so each run sees the same failures in the same order)."""
    sim = Simulation(client, client.app, headers, prompt=prompt)
    production, candidate = (f"errors:{rate},{LATENCY}" for rate in errors)
    await sim.prepare(production_model=f"{production}/{prompt}-p", candidate_model=f"{candidate}/{prompt}-c")
    return sim


async def plotted(page: Any, index: int) -> list[str]:
    """The titles of the points of guardrail ``index``'s plot (one per check), after checking its tolerance line."""
    chart = page.locator(f"svg[aria-labelledby^='guardrail-{index}-title']")
    assert await chart.count() == 1
    assert await chart.locator("g.chart-reference line").count() == 1
    assert (await chart.locator("g.chart-reference > title").text_content() or "").startswith("tolerated worse: ")
    rows = chart.locator("g.chart-row")
    assert await rows.locator("circle").count() == await rows.count()
    return [await title.text_content() or "" for title in await rows.locator("> title").all()]


async def test_the_rollout_page_plots_each_recorded_check_of_each_guardrail(
    client: AppClient, admin: dict[str, str], served: Console
) -> None:
    await create_metrics(client, admin)
    guardrails = [ERRORS_GUARDRAIL, LATENCY_GUARDRAIL]

    # Running: an equal candidate moved on twice by the checker, then held at 50% (the latest check). Each check
    # sees 300 new units, so each side has more than the 74 a p95 needs for an interval (gbstats' rule).
    running = await simulated(client, admin, "checkout-reply", (0.1, 0.1))
    steps = [{"share": 0.3, "min_units": 300}, {"share": 0.4, "min_units": 300}, {"share": 0.5, "min_units": 10**6}]
    first = await running.start([*steps, {"share": 1.0}], guardrails)
    outcome = await running.run(first["id"], batch=300, limit=1200)
    assert (outcome.status, outcome.actions) == ("running", ["advance", "advance", "hold", "hold"])

    # Rolled back: a candidate failing a quarter of its completions, moved on once, then caught at 50%.
    erring = await simulated(client, admin, "refund-reply", (0.05, 0.25))
    plan = [{"share": 0.3, "min_units": 300}, {"share": 0.5, "min_units": 10**6}, {"share": 1.0}]
    second = await erring.start(plan, guardrails)
    rolled_back = await erring.run(second["id"], batch=300, limit=3000)
    assert rolled_back.status == "rolled_back"
    assert rolled_back.actions[0] == "advance"

    page = await served.signed_in("admin")
    await page.goto(f"/console/rollouts/{first['id']}")
    assert " ".join((await page.locator("h1").inner_text()).split()) == f"Rollout {first['id']} running"
    for index in range(2):  # checks 1 and 2 moved it on (recorded on their events), the latest held
        points = await plotted(page, index)
        assert [p.split(":")[0] for p in points] == ["check 1 · 30%", "check 2 · 40%", "check 3 · 50%"], points
    head = await page.locator("section[aria-labelledby='guardrails-title'] .card-head").inner_text()
    assert re.search(r"Latest check \d{4}-\d\d-\d\d \d\d:\d\d UTC: \d+ production and \d+ candidate units", head), head
    # The units of the step it holds at (two checks of 300), and of all three steps together (300 + 300 + 600).
    totals = re.search(
        r"(\d+) production and (\d+) candidate units in this step \(([\d,]+) and ([\d,]+) in all steps\)", head
    )
    assert totals is not None, head
    now, in_all = [int(totals[i]) for i in (1, 2)], [int(totals[i].replace(",", "")) for i in (3, 4)]
    assert (sum(now), sum(in_all)) == (600, 1200), head
    captions = await page.locator("figure.chart-figure figcaption").all_inner_texts()
    assert [c.split(" ")[0] for c in captions] == ["failed", "latency_p95"]  # which guardrail each plot is
    await check_page(page, "rollout-checks-running")

    await page.goto(f"/console/rollouts/{second['id']}")
    assert " ".join((await page.locator("h1").inner_text()).split()) == f"Rollout {second['id']} rolled back"
    assert await page.locator("#rollout-reason").inner_text() == "guardrail 'failed' is significantly worse"
    errors = await plotted(page, 0)
    assert [p.split(":")[0] for p in errors] == ["check 1 · 30%", "check 2 · 50%"], errors
    assert errors[-1].endswith("(failed)")
    assert not errors[0].endswith("(failed)")
    assert float(errors[-1].split("worst bound ")[1].removesuffix(" (failed)")) > 0  # beyond the tolerance, 0
    await check_page(page, "rollout-checks-rolled-back")
