"""The experiment form takes any metric, not only the first ones it lists, and keeps those it does not list.

The form offered the first 500 metrics (by key) as a select and checkboxes and nothing else: a later metric could
not be chosen, and editing an experiment whose metrics were past the cut showed none chosen and saved them away.
Now the primary metric is a field that suggests the listed keys and takes any key, the guardrails keep their
chosen metrics as ticked boxes, and keys of unlisted metrics can be typed.
"""

from __future__ import annotations

import pytest

from registry.console import experiments
from registry.console.experiments_form import guardrails_sent
from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import unique
from tests.console.test_dec6_playground_run_once import shot
from tests.console.test_experiment_pages import definition, prompt_and_metric


async def test_metrics_past_the_listed_ones_are_kept_and_can_be_chosen(
    console: Console, live: LiveRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Metric keys sort by key; "zzz-" ones come after every other test's metrics, past a cut of one.
    late = [unique("zzz-primary"), unique("zzz-guard"), unique("zzz-other"), unique("zzz-new-primary")]
    async with live.api() as api:
        prompt, _ = await prompt_and_metric(api)
        for metric in late:
            assert (await api.post("/v1/metrics", json={"key": metric, "kind": "binomial"})).status_code == 201
        key = unique("late-metrics")
        body = {
            "key": key,
            "prompt": prompt,
            "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
            "primary_metric": late[0],
            "guardrail_metrics": [late[1]],
        }
        assert (await api.post("/v1/experiments", json=body)).status_code == 201
    monkeypatch.setattr(experiments, "METRICS_OFFERED", 1)

    page = await console.signed_in("admin")
    await page.goto(f"/console/experiments/{key}/edit")
    assert await page.get_by_label("Primary metric").input_value() == late[0]
    assert await page.get_by_role("checkbox", name=late[1]).is_checked()
    assert "type the keys of any others" in await page.locator("#f-more-guardrails-hint").inner_text()
    await check_page(page, "console2_experiment_metrics_past_the_list")
    shot("console2_experiment_metrics_past_the_list")

    await page.get_by_label("Description").fill("Kept its metrics")
    await page.get_by_role("button", name="Save changes").click()
    assert await page.locator("p.notice").inner_text() == "The changes are saved."
    async with live.api() as api:
        saved = await definition(api, key)
    assert (saved["primary_metric"], saved["guardrail_metrics"]) == (late[0], [late[1]])

    await page.get_by_role("link", name="Edit").click()
    await page.get_by_label("Primary metric").fill(late[3])
    await page.get_by_label("Other guardrail metrics").fill(f"{late[2]}, {late[1]}")
    await page.get_by_role("button", name="Save changes").click()
    assert await page.locator("p.notice").inner_text() == "The changes are saved."
    async with live.api() as api:
        saved = await definition(api, key)
    assert (saved["primary_metric"], saved["guardrail_metrics"]) == (late[3], [late[1], late[2]])


def test_the_guardrails_sent_are_the_ticked_then_the_typed_each_once() -> None:
    assert guardrails_sent(["a", "b"], " c, a  d,,") == ["a", "b", "c", "d"]
    assert guardrails_sent([], "") == []
