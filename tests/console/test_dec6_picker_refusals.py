"""A mistyped choice in a form's pickers (a version, a config, a metric, a prompt, a dataset) is said at its field.

The playground's pickers answered a version or config that names nothing with a whole error page (404, or 422 for
a config not written name@version), every other choice lost; the evaluation form put the service's refusal in a
banner alone, with 400; the experiment form answered 400 and put an unknown guardrail metric's message next to the
primary metric. Each now answers 422 with the form as it was sent and the message at the field that was mistyped.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from registry.configs.service import ConfigVersionNotFoundError
from registry.console import experiments
from registry.console.evals import problems_of
from registry.console.experiments_form import service_errors
from registry.evals.errors import DatasetNotFoundError, DatasetVersionNotFoundError
from registry.lib.errors import ConflictError, FieldError, InvalidInputError, RegistryError
from registry.prompts.errors import PromptNotFoundError, PromptVersionNotFoundError
from tests.console.conftest import SCREENSHOTS, Console, LiveRegistry, check_page, sign_in
from tests.console.seed import create_prompt, create_version, promote, unique
from tests.console.test_playground import fault_config, playground_url
from tests.evals.conftest import answers, dataset, start_run

SHOTS = Path("/tmp/console-shots")


def shot(name: str) -> None:
    """A copy of a screenshot ``check_page`` wrote, to look at the page."""
    SHOTS.mkdir(exist_ok=True)
    shutil.copyfile(SCREENSHOTS / f"{name}.png", SHOTS / f"{name}.png")


async def submitted(page: Any, button: str) -> int:
    """Press a form's button and wait for the page it answers; its status."""
    async with page.expect_navigation() as navigation:
        await page.get_by_role("button", name=button, exact=True).click()
    response = await navigation.value
    assert response is not None
    status: int = response.status
    return status


async def test_mistyped_versions_configs_and_metrics_on_the_experiment_form_are_said_at_their_fields(
    console: Console, live: LiveRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt, metric, key = unique("pickers/greeting"), unique("picked-metric"), unique("picker-test")
    async with live.api() as api:
        await create_prompt(api, prompt)
        await create_version(api, prompt, "Hello {{ name }}")
        await create_version(api, prompt, "Hi {{ name }}!")
        for each in (metric, unique("zzz-unlisted")):
            assert (await api.post("/v1/metrics", json={"key": each, "kind": "binomial"})).status_code == 201
    monkeypatch.setattr(experiments, "METRICS_OFFERED", 1)  # past the metrics listed, keys are typed
    page = await console.signed_in("alice")
    await page.goto("/console/experiments/new")
    await page.get_by_label("Key", exact=True).fill(key)
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    await page.get_by_label("Description").fill("Kept when refused")
    await page.get_by_label("Variant 2 prompt version").fill("9")
    await page.get_by_label("Variant 2 config").fill("no-such-config@1")
    await page.get_by_label("Primary metric").fill(metric)
    await page.get_by_label("Other guardrail metrics").fill("no-such-guardrail")

    assert await submitted(page, "Create draft") == 422
    assert await page.locator("#error-variant_version_1").inner_text() == "prompt has no version 9"
    assert "no-such-config" in await page.locator("#error-variant_config_1").inner_text()
    assert "no-such-guardrail" in await page.locator("#error-guardrail_metrics").inner_text()
    assert await page.locator("#error-primary_metric").count() == 0
    assert await page.get_by_label("Variant 2 prompt version").get_attribute("aria-invalid") == "true"
    # Everything sent is shown again: the typed values, and the unknown guardrail still chosen.
    assert await page.get_by_label("Key", exact=True).input_value() == key
    assert await page.get_by_label("Description").input_value() == "Kept when refused"
    assert await page.get_by_label("Variant 2 prompt version").input_value() == "9"
    assert await page.get_by_label("Variant 2 config").input_value() == "no-such-config@1"
    assert await page.get_by_label("Primary metric").input_value() == metric
    assert await page.get_by_role("checkbox", name="no-such-guardrail").is_checked()
    await check_page(page, "picker_experiment_form_refused")
    shot("picker_experiment_form_refused")
    async with live.api() as api:
        assert (await api.get(f"/v1/experiments/{key}")).status_code == 404

    # Corrected, the same form saves.
    await page.get_by_label("Variant 2 prompt version").fill("2")
    await page.get_by_label("Variant 2 config").fill("")
    await page.get_by_role("checkbox", name="no-such-guardrail").uncheck()
    assert await submitted(page, "Create draft") == 200
    async with live.api() as api:
        saved = (await api.get(f"/v1/experiments/{key}")).json()
    assert (saved["primary_metric"], saved["guardrail_metrics"]) == (metric, [])


async def test_a_mistyped_playground_picker_keeps_the_page_and_says_which_choice_names_nothing(
    console: Console, live: LiveRegistry
) -> None:
    name = unique("pickers/playground")
    async with live.api() as api:
        config = await fault_config(api, "ok", max_tokens=3, prices=(1.0, 1.0))
        await create_prompt(api, name)
        await create_version(api, name, "Hello {{ who }}.", config={"name": config, "version": 1})
        await create_version(api, name, "Hi {{ who }}!", config={"name": config, "version": 1})
        await promote(api, name, 1, "production", None)
    page = await console.signed_in("reader")
    await page.goto(playground_url(name))
    await page.get_by_label("Version", exact=True).fill("42")
    await page.get_by_label("Model config", exact=True).fill(f"{config}@7")
    await page.get_by_label("Side by side with").fill("2")
    assert await submitted(page, "Use these versions") == 422

    assert await page.locator("#error-version").inner_text() == f"{name} has no version 42"
    assert f"{config}" in await page.locator("#error-config").inner_text()
    assert await page.get_by_label("Version", exact=True).get_attribute("aria-invalid") == "true"
    # What was typed stays in the pickers; the page shows what could be chosen: production beside v2.
    assert await page.get_by_label("Version", exact=True).input_value() == "42"
    assert await page.get_by_label("Model config", exact=True).input_value() == f"{config}@7"
    assert await page.get_by_label("Side by side with").input_value() == "2"
    assert "Shown instead: v1 on" in await page.locator("#picker-problems").inner_text()
    sides = await page.locator(".side-list li").all_inner_texts()
    assert [side.split()[0] for side in sides] == ["v1", "v2"]
    await check_page(page, "picker_playground_refused")
    shot("picker_playground_refused")

    # A config not written name@version is said at its picker too, not as an error page.
    query = urlencode({"version": "1", "compare_version": "2", "compare_config": "fast"})
    opened = await page.goto(f"{playground_url(name)}?{query}")
    assert opened is not None
    assert opened.status == 422
    assert "name@version" in await page.locator("#error-compare_config").inner_text()
    assert await page.get_by_label("Its model config").input_value() == "fast"
    assert await page.get_by_role("button", name="Render").count() == 1

    # Corrected, the page opens as asked.
    await page.get_by_label("Version", exact=True).fill("2")
    await page.get_by_label("Side by side with").fill("")
    await page.get_by_label("Its model config").fill("")
    await page.get_by_label("Model config", exact=True).fill(f"{config}@1")
    assert await submitted(page, "Use these versions") == 200
    assert await page.locator(".field-error").count() == 0


async def test_mistyped_parts_of_an_evaluation_run_are_said_at_their_fields(
    console: Console, live: LiveRegistry
) -> None:
    prompt, data = unique("pickers/eval"), unique("picker-data")
    async with live.api() as api:
        config = await fault_config(api, "ok", max_tokens=3, prices=(1.0, 1.0))
        await create_prompt(api, prompt)
        await create_version(api, prompt, "Answer {{ answer }}")
        await dataset(api, {}, data, answers(("a", "a")))
    page = await console.signed_in("alice")
    await page.goto("/console/evals/new")
    await page.get_by_label("Prompt", exact=True).fill(f"{prompt}-typo")
    await page.get_by_label("Prompt version").fill("1")
    await page.get_by_label("Dataset", exact=True).fill(data)
    await page.get_by_label("Concurrency").fill("2")
    await page.locator("#f-config-version").fill("1")

    cases = [
        ("#f-prompt", f"{prompt}-typo", "prompt", prompt),
        ("#f-version", "7", "version", "1"),
        ("#f-config", "no-such-config", "config", config),
        ("#f-dataset", f"{data}-typo", "dataset", data),
    ]
    for field_id, typo, field, right in cases:
        await page.locator(field_id).fill(typo)
        assert await submitted(page, "Start run") == 422, field
        assert typo in await page.locator(f"#error-{field}").inner_text(), field
        assert await page.locator(".field-error").count() == 1, field
        assert await page.locator(field_id).get_attribute("aria-invalid") == "true"
        assert await page.locator(field_id).input_value() == typo
        assert await page.get_by_label("Concurrency").input_value() == "2"
        assert "One thing to fix; the run was not started." in await page.get_by_role("alert").inner_text()
        if field == "config":
            await check_page(page, "picker_eval_form_refused")
            shot("picker_eval_form_refused")
        await page.locator(field_id).fill(right)

    # The form's own checks are at their fields as well, all at once.
    await page.get_by_label("Prompt version").fill("two")
    await page.get_by_label("Concurrency").fill("a few")
    assert await submitted(page, "Start run") == 422
    assert await page.locator("#error-version").inner_text() == "Prompt version must be a whole number from 1"
    assert await page.locator("#error-concurrency").inner_text() == "Concurrency must be a whole number from 1"
    assert "2 things to fix" in await page.get_by_role("alert").inner_text()


async def metrics_named(live: LiveRegistry, prefix: str, *kinds: str) -> dict[str, list[str]]:
    """Ten metrics of each kind, keyed ``{prefix}-{kind}-{n}``."""
    made: dict[str, list[str]] = {}
    async with live.api() as api:
        for kind in kinds:
            for n in range(10):
                key = f"{prefix}-{kind}-{n}"
                assert (await api.post("/v1/metrics", json={"key": key, "kind": "binomial"})).status_code == 201
                made.setdefault(kind, []).append(key)
    return made


async def shown_guardrails(page: Any) -> list[str]:
    texts: list[str] = await page.locator("#guardrail-list .check:visible label").all_inner_texts()
    return texts


async def test_the_guardrail_list_filters_as_one_types_keeping_what_is_ticked(
    console: Console, live: LiveRegistry
) -> None:
    prefix = unique("guard")
    made = await metrics_named(live, prefix, "latency", "errors")
    page = await console.signed_in("alice")
    await page.goto("/console/experiments/new")
    await page.get_by_label("Key", exact=True).fill("kept-key")
    assert await page.locator("[data-guardrail-filter-button]").is_hidden()  # filtering as one types needs no button
    search = page.get_by_role("searchbox", name="Filter the guardrail metrics")

    await search.fill(f"{prefix} LATENCY")
    assert await shown_guardrails(page) == made["latency"]
    await page.get_by_role("checkbox", name=made["latency"][3]).check()
    await search.fill(f"{prefix} errors")
    assert await shown_guardrails(page) == [*made["errors"], made["latency"][3]]  # by key, a ticked one stays
    status = await page.locator("#guardrail-shown").inner_text()
    assert status.startswith("11 of "), status
    assert await page.locator("#guardrail-count").inner_text() == "1 chosen"
    # From the keyboard: Enter in the filter filters and sends nothing; Tab reaches the list.
    await search.press("Enter")
    assert await page.get_by_role("alert").count() == 0
    await search.press("Tab")
    assert await page.evaluate("document.activeElement.name") in ("guardrail_metrics",)
    await check_page(page, "guardrail_filter_with_script")
    shot("guardrail_filter_with_script")

    await search.fill(f"{prefix} nothing-matches")
    assert await shown_guardrails(page) == [made["latency"][3]]
    await search.fill("")
    assert set(made["latency"] + made["errors"]) <= set(await shown_guardrails(page))


async def test_the_guardrail_list_filters_without_scripts_keeping_the_form(
    console: Console, live: LiveRegistry
) -> None:
    prefix = unique("noscript")
    made = await metrics_named(live, prefix, "latency", "errors")
    context = await console.browser.new_context(
        base_url=live.url, viewport={"width": 1280, "height": 800}, java_script_enabled=False
    )
    context.set_default_timeout(5000)
    console.watch.attach(context)
    console.contexts.append(context)
    page = await context.new_page()
    await sign_in(page, live.keys["alice"])
    await page.goto("/console/experiments/new")
    await page.get_by_label("Key", exact=True).fill("kept-key")
    await page.get_by_label("Description").fill("Still here")
    await page.get_by_role("searchbox", name="Filter the guardrail metrics").fill(f"{prefix} errors")
    assert await submitted(page, "Filter") == 200
    assert await shown_guardrails(page) == made["errors"]
    assert await page.get_by_label("Key", exact=True).input_value() == "kept-key"
    assert await page.get_by_label("Description").input_value() == "Still here"
    assert await page.get_by_role("alert").count() == 0
    await page.get_by_role("checkbox", name=made["errors"][5]).check()
    await page.get_by_role("searchbox", name="Filter the guardrail metrics").fill(f"{prefix} latency-1")
    assert await submitted(page, "Filter") == 200
    assert await shown_guardrails(page) == [made["errors"][5], made["latency"][1]]
    assert await page.get_by_role("checkbox", name=made["errors"][5]).is_checked()
    assert "2 of " in await page.locator("#guardrail-shown").inner_text()
    # No axe here: it runs as a script, and this page runs none (the page with scripts is checked above).
    await page.screenshot(path=str(SCREENSHOTS / "guardrail_filter_without_script.png"), full_page=True)
    shot("guardrail_filter_without_script")
    # Enter in a field saves (the form's default button), as before the list had a Filter button.
    async with page.expect_navigation() as navigation:
        await page.get_by_label("Key", exact=True).press("Enter")
    response = await navigation.value
    assert response is not None
    assert response.status == 422  # no prompt yet: the form says so
    assert await page.locator("#error-prompt").inner_text() == "Required"
    assert await page.get_by_role("checkbox", name=made["errors"][5]).is_checked()


def test_an_unknown_metric_is_said_where_it_was_chosen() -> None:
    errors = [
        FieldError("metrics", "no metric is named 'typo-primary'"),
        FieldError("metrics", "no metric is named 'typo-guard'"),
        FieldError("metrics", "no metric is named 'other-guard'"),
    ]
    assert service_errors(errors, ["typo-guard", "other-guard"]) == {
        "primary_metric": "no metric is named 'typo-primary'",
        "guardrail_metrics": "no metric is named 'typo-guard'; no metric is named 'other-guard'",
    }


@pytest.mark.parametrize(
    ("error", "field"),
    [
        (PromptNotFoundError("no prompt is named 'x'"), "prompt"),
        (PromptVersionNotFoundError("prompt 'x' has no version 7"), "version"),
        (DatasetNotFoundError("no dataset is named 'd'"), "dataset"),
        (DatasetVersionNotFoundError("dataset 'd' has no version 3"), "dataset_version"),
        (ConfigVersionNotFoundError("config 'c' has no version 9"), "config_version"),
        (InvalidInputError("bad", errors=[FieldError("concurrency", "at most 64")]), "concurrency"),
        (InvalidInputError("bad", errors=[FieldError("scorers[1].kind", "unknown")]), "scorers_json"),
        (ConflictError("something else"), "form"),
    ],
    ids=["prompt", "version", "dataset", "dataset-version", "config-version", "field", "scorer", "other"],
)
def test_a_refused_run_is_said_at_the_field_that_named_it(error: RegistryError, field: str) -> None:
    assert list(problems_of(error)) == [field]


def test_a_config_named_with_a_version_it_lacks_is_said_at_the_config_version() -> None:
    refused = InvalidInputError("config 'c' has no version 9", errors=[FieldError("config", "has no version 9")])
    refused.__cause__ = ConfigVersionNotFoundError("config 'c' has no version 9")  # as resolve_ref raises it
    assert problems_of(refused) == {"config_version": "has no version 9"}


async def test_a_run_to_compare_with_that_names_none_is_said_on_the_run_page(
    console: Console, live: LiveRegistry
) -> None:
    prompt, data, other = unique("pickers/compare"), unique("compare-data"), unique("other-data")
    async with live.api() as api:
        config = await fault_config(api, "ok", max_tokens=3, prices=(1.0, 1.0))
        await create_prompt(api, prompt)
        await create_version(api, prompt, "Answer {{ answer }}", config={"name": config, "version": 1})
        await dataset(api, {}, data, answers(("a", "a")))
        await dataset(api, {}, other, answers(("b", "b")))
        run = await start_run(api, {}, prompt=prompt, version=1, dataset={"name": data})
        elsewhere = await start_run(api, {}, prompt=prompt, version=1, dataset={"name": other})
    page = await console.signed_in("reader")
    await page.goto(f"/console/evals/runs/{run['id']}")
    missing = elsewhere["id"] + 100_000
    await page.get_by_label("Compare with run").fill(str(missing))
    assert await submitted(page, "Compare") == 422
    assert str(missing) in await page.locator("#error-base").inner_text()
    assert await page.get_by_label("Compare with run").input_value() == str(missing)
    assert await page.get_by_label("Compare with run").get_attribute("aria-invalid") == "true"
    # The run's own page, not an error page (its items' part is there whether or not the run has items yet).
    assert await page.locator("#run-items").count() == 1

    await page.get_by_label("Compare with run").fill(str(elsewhere["id"]))
    assert await submitted(page, "Compare") == 422
    assert "needs the same dataset version" in await page.locator("#error-base").inner_text()
    await check_page(page, "picker_eval_compare_refused")
    shot("picker_eval_compare_refused")
