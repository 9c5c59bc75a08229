"""The playground's model config picker takes any config version, not only the first ones it suggests.

The picker was a select of the first 300 config versions (by name, newest first): a later one could not be
chosen there, and a page opened on one (``?config=``) showed "the version's own" in the picker, which the
next "Use these versions" then sent. It is now a field of ``name@version`` suggesting the listed ones.
"""

from __future__ import annotations

import pytest

from registry.console import playground
from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import create_prompt, create_version, unique
from tests.console.test_dec6_playground_run_once import shot
from tests.console.test_playground import fault_config, playground_url


async def test_a_config_version_past_the_suggested_ones_can_be_chosen_and_stays_chosen(
    console: Console, live: LiveRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("playground/late-config")
    async with live.api() as api:
        own = await fault_config(api, "ok", max_tokens=3, prices=(1.0, 1.0))
        late = unique("zzz-config")  # config names sort; this one comes after every other test's, past a cut of one
        assert (await api.post("/v1/configs", json={"name": late})).status_code == 201
        body = {"backend": "fault", "model": f"ok/{late}", "params": {"max_tokens": 3}}
        assert (await api.post(f"/v1/configs/{late}/versions", json=body)).status_code == 201
        await create_prompt(api, name)
        await create_version(api, name, "Hi {{ who }}.", config={"name": own, "version": 1})
    monkeypatch.setattr(playground, "CONFIG_VERSIONS_LISTED", 1)

    page = await console.signed_in("reader")
    await page.goto(playground_url(name))
    suggested = await page.locator("#config-versions option").evaluate_all("os => os.map(o => o.value)")
    assert len(suggested) == 1
    assert f"{late}@1" not in suggested
    assert "or type any other" in await page.locator("#pick-config-hint").inner_text()
    await page.get_by_label("Model config", exact=True).fill(f"{late}@1")
    await page.get_by_role("button", name="Use these versions").click()
    assert await page.get_by_label("Model config", exact=True).input_value() == f"{late}@1"
    chosen = await page.locator(".side-list").inner_text()
    assert f"runs on {late}@1" in chosen
    assert "chosen here" in chosen
    await check_page(page, "console2_playground_config_picker")
    shot("console2_playground_config_picker")

    # The picker, sent again as it shows, keeps the config; the run uses it.
    await page.get_by_role("button", name="Use these versions").click()
    assert f"runs on {late}@1" in await page.locator(".side-list").inner_text()
    await page.get_by_label("who").fill("Ada")
    await page.get_by_role("button", name="Run").click()
    await page.locator("[slot='a-foot'] [data-usage='cost']").wait_for()
    assert [seen.path for seen in live.fault.seen(f"ok/{late}") if seen.path != "/tokenize"] == ["/v1/completions"]


async def test_a_version_older_than_the_suggested_ones_can_be_chosen_in_the_picker(
    console: Console, live: LiveRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("playground/old-version")
    async with live.api() as api:
        await create_prompt(api, name)
        for text in ("First {{ who }}.", "Second {{ who }}.", "Third {{ who }}."):
            await create_version(api, name, text)
    monkeypatch.setattr(playground, "VERSIONS_LISTED", 1)

    page = await console.signed_in("reader")
    await page.goto(playground_url(name))
    suggested = await page.locator("#prompt-versions option").evaluate_all("os => os.map(o => o.value)")
    assert suggested == ["3"]
    assert "the newest 1; type any other" in await page.locator("#pick-version-hint").inner_text()
    await page.get_by_label("Version", exact=True).fill("1")
    await page.get_by_label("Side by side with").fill("2")
    await page.get_by_role("button", name="Use these versions").click()
    assert await page.get_by_label("Version", exact=True).input_value() == "1"
    assert await page.get_by_label("Side by side with").input_value() == "2"
    await page.get_by_label("who").fill("Ada")
    await page.get_by_role("button", name="Render").click()
    assert await page.get_by_role("region", name="Rendered v1 (1 of 2)").locator(".output").inner_text() == (
        "First Ada."
    )
    assert await page.get_by_role("region", name="Rendered v2 (2 of 2)").locator(".output").inner_text() == (
        "Second Ada."
    )
    await check_page(page, "console2_playground_version_picker")
    shot("console2_playground_version_picker")
