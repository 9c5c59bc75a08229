"""A playground run is made once per form: reloading its page (which sends the form again) runs nothing.

The run's answer is the page its completions stream into, so a reload, or a back/forward that reloads it,
sent the form again and ran (and billed) every side again. Each page's form now carries a run id of its
own; the same id sent again answers the page, filled in, with a notice and a fresh id, and runs nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.console.conftest import SCREENSHOTS, Console, LiveRegistry, check_page
from tests.console.seed import create_prompt, create_version, unique
from tests.console.test_playground import fault_config, playground_url, usage_of

ALREADY_RUN = "This run was already made"


def completions_of(live: LiveRegistry, model: str) -> list[str]:
    """The completions the fault backend was asked for on ``model`` (not the token counts asked before them)."""
    return [seen.path for seen in live.fault.seen(model) if seen.path != "/tokenize"]


def shot(name: str) -> None:
    """A copy of a screenshot ``check_page`` wrote, for looking at the changed page."""
    Path("/tmp/shots").mkdir(exist_ok=True)
    shutil.copyfile(SCREENSHOTS / f"{name}.png", f"/tmp/shots/{name}.png")


async def test_reloading_a_run_runs_nothing_again_and_says_so_and_run_runs_again(
    console: Console, live: LiveRegistry
) -> None:
    name = unique("playground/run-once")
    async with live.api() as api:
        left = await fault_config(api, "ok", max_tokens=3, prices=(1.0, 1.0))
        right = await fault_config(api, "ok", max_tokens=3, prices=(1.0, 1.0))
        await create_prompt(api, name)
        await create_version(api, name, "Greet {{ who }}.", config={"name": left, "version": 1})
        await create_version(api, name, "Welcome {{ who }}.", config={"name": right, "version": 1})
    models = (f"ok/{left}", f"ok/{right}")

    def completions_seen() -> list[int]:
        return [len(completions_of(live, model)) for model in models]

    page = await console.signed_in("reader")
    await page.goto(f"{playground_url(name)}?version=1&compare_version=2")
    await page.get_by_label("who").fill("Grace")
    await page.get_by_role("button", name="Run both").click()
    await page.locator("[slot='a-foot'] [data-usage='cost']").wait_for()
    await page.locator("[slot='b-foot'] [data-usage='cost']").wait_for()
    assert completions_seen() == [1, 1]

    # A reload of the run's answer sends the same form (the same run id) again.
    async with page.expect_response(lambda r: r.url.endswith("/playground/run")) as info:
        await page.reload()
    again = await info.value
    assert again.request.method == "POST"
    assert again.status == 409
    assert ALREADY_RUN in await page.locator("#run-notice").inner_text()
    assert await page.get_by_label("who").input_value() == "Grace"
    assert await page.locator("[slot='a']").count() == 0  # no output: nothing ran
    assert completions_seen() == [1, 1]
    await check_page(page, "console2_playground_already_run")
    shot("console2_playground_already_run")

    # The page answered carries a new run id: Run runs again, once more per side.
    await page.get_by_role("button", name="Run both").click()
    await page.locator("[slot='b-foot'] [data-usage='cost']").wait_for()
    await page.locator("[slot='a-foot'] [data-usage='cost']").wait_for()
    assert await page.locator("#run-notice").count() == 0
    assert completions_seen() == [2, 2]
    async with live.api() as api:
        rows = await usage_of(api, name, "version")
    assert sorted((row["version"], row["requests"]) for row in rows) == [(1, 2), (2, 2)]


async def test_a_run_form_without_its_run_id_is_refused_and_runs_nothing(console: Console, live: LiveRegistry) -> None:
    name = unique("playground/run-no-id")
    async with live.api() as api:
        config = await fault_config(api, "ok", max_tokens=3, prices=(1.0, 1.0))
        await create_prompt(api, name)
        await create_version(api, name, "Hi {{ who }}.", config={"name": config, "version": 1})
    page = await console.signed_in("reader")
    await page.goto(playground_url(name))
    csrf = await page.locator("form.variables input[name=csrf]").get_attribute("value")
    run_id = await page.locator("form.variables input[name=run]").get_attribute("value")
    form = {"csrf": csrf, "version": "1", "var.who": "Ada"}
    refused = await page.request.post(f"{playground_url(name)}/run", form=form, max_redirects=0)
    assert refused.status == 400
    assert "press Run on the playground page" in await refused.text()
    assert completions_of(live, f"ok/{config}") == []
    made = await page.request.post(f"{playground_url(name)}/run", form={**form, "run": run_id}, max_redirects=0)
    assert made.ok
    assert 'data-usage="cost"' in await made.text(), await made.text()
    resent = await page.request.post(f"{playground_url(name)}/run", form={**form, "run": run_id}, max_redirects=0)
    assert resent.status == 409
    assert len(completions_of(live, f"ok/{config}")) == 1
