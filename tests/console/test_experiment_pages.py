"""Experiments from the console: create and edit from forms, start, stop with a winner, plots and downloads."""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import quote

import httpx
import pyarrow.parquet as pq

from registry.console.formatting import count, signed_percent
from tests.console.conftest import Console, LiveRegistry, check_page, sign_in
from tests.console.seed import create_prompt, create_version, promote, states, unique
from tests.console.test_experiments import run_experiment, settled_results, table_rows


async def prompt_and_metric(api: httpx.AsyncClient) -> tuple[str, str]:
    """A prompt with v1 in production and a v2, and a binomial metric."""
    prompt, metric = unique("forms/greeting"), unique("replied")
    await create_prompt(api, prompt)
    await create_version(api, prompt, "Hello {{ name }}")
    await create_version(api, prompt, "Hi {{ name }}!")
    await promote(api, prompt, 1, "production", None)
    assert (await api.post("/v1/metrics", json={"key": metric, "kind": "binomial"})).status_code == 201
    return prompt, metric


async def definition(api: httpx.AsyncClient, key: str) -> dict[str, Any]:
    response = await api.get(f"/v1/experiments/{quote(key, safe='')}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_a_draft_edit_it_start_it_and_stop_it_with_a_winner(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        prompt, metric = await prompt_and_metric(api)
    key = unique("greeting-test")
    page = await console.signed_in("admin")
    await page.goto("/console/experiments")
    await page.get_by_role("link", name="New experiment").click()

    # A refused form shows every problem next to its field, keeps what was typed, and saves nothing.
    await page.get_by_label("Key", exact=True).fill(key)
    await page.get_by_label("Variant 2 prompt version").fill("two")
    await page.get_by_label("Coverage").fill("150")
    await page.get_by_role("button", name="Create draft").click()
    assert "3 things to fix; nothing was saved." in await page.get_by_role("alert").inner_text()
    assert await page.locator("#error-prompt").inner_text() == "Required"
    assert await page.locator("#error-variant_version_1").inner_text() == "Enter a whole number"
    assert await page.locator("#error-coverage").inner_text() == "Enter a percentage from 0 to 100"
    assert await page.get_by_label("Key", exact=True).input_value() == key
    await check_page(page, "experiment-form-refused")
    # The service's own checks (a version the prompt lacks) land next to their fields too.
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_label("Variant 2 prompt version").fill("9")
    await page.get_by_label("Coverage").fill("100")
    await page.get_by_role("button", name="Create draft").click()
    assert await page.locator("#error-variant_version_1").inner_text() == "prompt has no version 9"
    async with live.api() as api:
        assert (await api.get(f"/v1/experiments/{key}")).status_code == 404

    await page.get_by_label("Variant 2 prompt version").fill("2")
    await page.get_by_label("Description").fill("Does a friendlier greeting get more replies?")
    await page.get_by_label("Primary metric").fill(metric)
    await page.get_by_label("Variant 2 config").fill("")
    await page.get_by_label("Forced variants").fill("qa-user = treatment")
    await check_page(page, "experiment-new")
    await page.get_by_role("button", name="Create draft").click()
    assert await page.locator("p.notice").inner_text() == "The experiment is saved as a draft."
    await check_page(page, "experiment-draft")
    async with live.api() as api:
        created = await definition(api, key)
    assert (created["status"], created["prompt"], created["primary_metric"]) == ("draft", prompt, metric)
    assert [(v["key"], v["prompt_version"]) for v in created["variants"]] == [("control", 1), ("treatment", 2)]
    assert created["forced_variants"] == {"qa-user": "treatment"}

    await page.get_by_role("link", name="Edit").click()
    assert await page.get_by_label("Variant 2 weight").input_value() == "50"  # the share, in percent
    await page.get_by_label("Variant 1 weight").fill("25")
    await page.get_by_label("Variant 2 weight").fill("75")
    await page.get_by_label("Coverage").fill("50")
    await page.get_by_role("button", name="Save changes").click()
    assert await page.locator("p.notice").inner_text() == "The changes are saved."
    async with live.api() as api:
        edited = await definition(api, key)
    assert [v["weight"] for v in edited["variants"]] == [0.25, 0.75]
    assert edited["coverage"] == 0.5

    await page.get_by_role("link", name="Start…").click()
    await check_page(page, "experiment-start")
    await page.get_by_role("button", name="Start experiment").click()
    assert await page.locator("p.notice").inner_text() == "The experiment is running."
    async with live.api() as api:
        assert (await definition(api, key))["status"] == "running"

    await page.get_by_role("link", name="Stop…").click()
    await page.get_by_role("radio", name="treatment").check()
    await page.get_by_label("Reason").fill("Friendlier won")
    await check_page(page, "experiment-stop")
    await page.get_by_role("button", name="Stop experiment").click()
    assert await page.locator("p.notice").inner_text() == "The experiment is stopped."
    async with live.api() as api:
        stopped = await definition(api, key)
        assert (stopped["status"], stopped["winner"], stopped["stop_reason"]) == (
            "stopped",
            "treatment",
            "Friendlier won",
        )
        assert (await states(api, prompt))[2] == "production"


async def test_a_key_without_promote_cannot_change_who_gets_what_in_a_running_experiment(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        prompt, metric = await prompt_and_metric(api)
        key = unique("routing-test")
        body = {
            "key": key,
            "prompt": prompt,
            "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
            "primary_metric": metric,
        }
        assert (await api.post("/v1/experiments", json=body)).status_code == 201
        assert (await api.post(f"/v1/experiments/{key}/start")).status_code == 200
        created = await api.post("/v1/keys", json={"name": unique("editor"), "scopes": ["read", "write", "analyze"]})
        assert created.status_code == 201, created.text
        editor = created.json()["key"]
    page = await console.page()
    await sign_in(page, editor)
    await page.goto(f"/console/experiments/{key}")
    assert await page.get_by_role("link", name="Stop…").count() == 0
    await page.get_by_role("link", name="Edit").click()
    assert "needs the promote scope" in await page.locator("#routing-locked").inner_text()
    for name in ("coverage", "hash_seed", "namespace_name", "forced_variants", "variant_weight_0", "variant_weight_1"):
        assert await page.locator(f"[name={name}]").count() == 0, name
    await check_page(page, "experiment-edit-running-no-promote")
    # What is not routing is still this key's to change.
    await page.get_by_label("Description").fill("Edited without promote")
    await page.get_by_role("button", name="Save changes").click()
    assert await page.locator("p.notice").inner_text() == "The changes are saved."

    csrf = await page.locator("input[name=csrf]").first.input_value()
    forged = {"csrf": csrf, "description": "forged", "coverage": "50", "variant_key_0": "control"}
    response = await page.request.post(f"/console/experiments/{key}/edit", form=forged, max_redirects=0)
    assert response.status == 403
    response = await page.request.post(f"/console/experiments/{key}/stop", form={"csrf": csrf}, max_redirects=0)
    assert response.status == 403
    async with live.api() as api:
        after = await definition(api, key)
    assert (after["coverage"], after["status"], after["phase"]) == (1.0, "running", 1)
    assert after["description"] == "Edited without promote"


async def test_the_results_page_plots_the_results_numbers_and_downloads_the_export(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        key = await run_experiment(api)
        results = await settled_results(api, key)
        api_csv = (await api.get(f"/v1/experiments/{key}/export", params={"format": "csv"})).content
        api_parquet = (await api.get(f"/v1/experiments/{key}/export", params={"format": "parquet"})).content
    page = await console.signed_in("analyst")
    await page.goto(f"/console/experiments/{key}")

    (metric,) = results["metrics"]
    treatment = metric["variants"][1]
    effect = treatment["vs_control"]["relative"]
    chart = page.get_by_role("img", name=f"Relative effect on {metric['metric']}, with 95% intervals")
    alternative = await chart.locator("desc").text_content()
    assert alternative is not None
    expected = f"treatment: {signed_percent(effect['estimate'])} ({signed_percent(effect['ci_low'])} to "
    assert expected + f"{signed_percent(effect['ci_high'])})" in alternative
    units = page.get_by_role("img", name="Units per variant over time")
    units_text = await units.locator("desc").text_content()
    assert units_text is not None
    for variant in results["variants"]:
        assert f"{variant['variant']} {count(variant['units'])}" in units_text
    assert await page.get_by_role("img", name=f"{metric['metric']} per variant over time").count() == 1
    await check_page(page, "experiment-results-plots")

    for label, expected_bytes in (("Download CSV", api_csv), ("Download Parquet", api_parquet)):
        href = await page.get_by_role("link", name=label).get_attribute("href")
        assert href is not None
        downloaded = await page.request.get(href)
        assert downloaded.status == 200
        assert "attachment" in downloaded.headers["content-disposition"]
        if label == "Download CSV":
            assert await downloaded.body() == expected_bytes
        else:
            mine = pq.read_table(io.BytesIO(await downloaded.body()))
            assert mine.equals(pq.read_table(io.BytesIO(expected_bytes)))
            assert mine.num_rows == results["units"]


async def draft_experiment(api: httpx.AsyncClient, prefix: str = "draft", **fields: Any) -> str:
    prompt, metric = await prompt_and_metric(api)
    key = unique(prefix)
    body = {
        "key": key,
        "prompt": prompt,
        "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
        "primary_metric": metric,
        **fields,
    }
    assert (await api.post("/v1/experiments", json=body)).status_code == 201
    return key


async def running_experiment(api: httpx.AsyncClient, **fields: Any) -> str:
    key = await draft_experiment(api, "running", **fields)
    assert (await api.post(f"/v1/experiments/{key}/start")).status_code == 200
    return key


async def test_a_change_the_service_refuses_halfway_leaves_nothing_behind(console: Console, live: LiveRegistry) -> None:
    namespace = unique("ns")
    async with live.api() as api:
        await running_experiment(api, namespace={"name": namespace, "start": 0, "end": 0.5})
        key = await running_experiment(api)
    page = await console.signed_in("admin")
    await page.goto(f"/console/experiments/{key}/edit")
    await page.get_by_label("Variant 1 weight").fill("25")
    await page.get_by_label("Variant 2 weight").fill("75")
    await page.get_by_label("Name", exact=True).fill(namespace)
    await page.get_by_label("From %").fill("20")
    await page.get_by_label("To %").fill("70")
    await page.get_by_role("button", name="Save changes").click()
    problems = await page.get_by_role("alert").inner_text()
    assert "nothing was saved" in problems
    assert "overlaps running experiment" in problems
    assert await page.get_by_label("Variant 2 weight").input_value() == "75"  # what was typed stays
    async with live.api() as api:
        after = await definition(api, key)
    assert [v["weight"] for v in after["variants"]] == [0.5, 0.5]
    assert (after["namespace"], after["phase"], len(after["phases"])) == (None, 1, 1)


async def test_starting_without_a_primary_metric_is_refused_with_the_reason(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        prompt, _ = await prompt_and_metric(api)
        key = unique("no-metric")
        variants = [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}]
        created = await api.post("/v1/experiments", json={"key": key, "prompt": prompt, "variants": variants})
        assert created.status_code == 201
    page = await console.signed_in("alice")  # promote, but no analyze: changes land on the form page
    await page.goto(f"/console/experiments/{key}/start")
    await page.get_by_role("button", name="Start experiment").click()
    assert "needs a primary metric to start" in await page.get_by_role("alert").inner_text()
    await check_page(page, "experiment-start-refused")
    async with live.api() as api:
        assert (await definition(api, key))["status"] == "draft"


async def test_more_variant_rows_keeps_what_was_typed_and_saves_nothing(console: Console, live: LiveRegistry) -> None:
    key = unique("more-rows")
    page = await console.signed_in("alice")
    await page.goto("/console/experiments/new")
    assert await page.locator("input[name^=variant_key_]").count() == 3  # two variants and a spare row
    await page.get_by_label("Key", exact=True).fill(key)
    await page.get_by_label("Variant 3 key").fill("third")
    await page.get_by_label("Variant 3 prompt version").fill("2")
    await page.get_by_label("Variant 3 weight").fill("10")
    await page.get_by_role("button", name="More variant rows").click()
    assert await page.locator("input[name^=variant_key_]").count() == 5
    assert await page.get_by_label("Variant 3 key").input_value() == "third"
    assert await page.get_by_label("Key", exact=True).input_value() == key
    async with live.api() as api:
        assert (await api.get(f"/v1/experiments/{key}")).status_code == 404


async def test_saving_a_running_experiment_unchanged_keeps_its_phase(console: Console, live: LiveRegistry) -> None:
    """Weights of 1 and 2 show as 33.3333 and 66.6667, a third of coverage as 33.3333: sent back, nothing changes."""
    namespace = unique("thirds")
    async with live.api() as api:
        key = await running_experiment(api, coverage=1 / 3, namespace={"name": namespace, "start": 1 / 3, "end": 2 / 3})
        weights = {"weights": {"control": 1, "treatment": 2}, "reason": "thirds"}
        assert (await api.patch(f"/v1/experiments/{key}", json=weights)).status_code == 200
        before = await definition(api, key)
    page = await console.signed_in("admin")
    await page.goto(f"/console/experiments/{key}/edit")
    assert await page.get_by_label("Variant 1 weight").input_value() == "33.3333"
    await page.get_by_label("Description").fill("Only the words change")
    await page.get_by_role("button", name="Save changes").click()
    assert await page.locator("p.notice").inner_text() == "The changes are saved."
    async with live.api() as api:
        after = await definition(api, key)
    assert after["description"] == "Only the words change"
    assert (after["phase"], after["coverage"], after["namespace"]) == (before["phase"], 1 / 3, before["namespace"])
    assert [v["weight"] for v in after["variants"]] == [v["weight"] for v in before["variants"]]


async def test_a_variant_without_data_is_not_shown_as_the_control(console: Console, live: LiveRegistry) -> None:
    """With no units yet, only the first variant is the control; the others are not compared yet, with the reason."""
    async with live.api() as api:
        key = await running_experiment(api)
        results = (await api.get(f"/v1/experiments/{key}/results")).json()
    (metric,) = results["metrics"]
    assert [v["units"] for v in metric["variants"]] == [0, 0]
    assert [v["vs_control"] for v in metric["variants"]] == [None, None]
    page = await console.signed_in("analyst")
    await page.goto(f"/console/experiments/{key}")
    rows = await table_rows(page.get_by_role("region", name=metric["metric"]))
    assert [row[-1] for row in rows] == [
        "control: the baseline the others are compared with",
        "not compared with control yet",
    ]
    assert rows[1][0] == f"treatment {metric['variants'][1]['note']}"
