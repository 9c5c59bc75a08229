"""The console's stop form answers the refusal of an archived winner (tests/experiments/test_archived_winner.py)."""

from __future__ import annotations

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import promote, unique
from tests.console.test_experiment_pages import definition, prompt_and_metric
from tests.experiments.conftest import experiment_body
from tests.experiments.test_archived_winner import REFUSAL


async def test_the_consoles_stop_form_shows_the_refusal_of_an_archived_winner(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        prompt, metric = await prompt_and_metric(api)
        key = unique("archived-winner")
        body = experiment_body(key, prompt, primary_metric=metric)
        assert (await api.post("/v1/experiments", json=body)).status_code == 201
        assert (await api.post(f"/v1/experiments/{key}/start")).status_code == 200
        await promote(api, prompt, 2, "archived", None, reason="withdrawn")
    page = await console.signed_in("admin")
    await page.goto(f"/console/experiments/{key}/stop")

    await page.get_by_role("radio", name="treatment").check()
    await page.get_by_role("button", name="Stop experiment").click()

    refusal = await page.get_by_role("alert").inner_text()
    assert refusal == f"This cannot be done: variant 'treatment' cannot win: {REFUSAL}"
    await check_page(page, "experiment-stop-archived-winner")
    async with live.api() as api:
        assert (await definition(api, key))["status"] == "running"
    await page.get_by_role("radio", name="No winner").check()
    await page.get_by_role("button", name="Stop experiment").click()
    assert await page.locator("p.notice").inner_text() == "The experiment is stopped."
