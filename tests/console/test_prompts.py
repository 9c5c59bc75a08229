"""Prompts in the console: promote and roll back with confirmation, concurrent promotions, read-only keys."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import create_prompt, create_version, history, prompt_with_versions, states, unique


def words(text: str) -> str:
    """Text as read aloud: the layout's line breaks between inline parts become single spaces."""
    return " ".join(text.split())


def prompt_url(name: str) -> str:
    return f"/console/prompts/{quote(name, safe='')}"


async def test_promote_then_roll_back_with_a_reason(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(
            api, "support/summarize", 1, description="Summarizes a support ticket.", tags=["team:support", "tier:1"]
        )
        await create_version(
            api,
            name,
            "Summarize {{ ticket }} in at most {{ max_words }} words.\nSecond line.",
            commit_message="Ask for a word limit",
            input_schema={
                "properties": {"ticket": {"type": "string"}, "max_words": {"type": "integer"}},
                "required": ["max_words"],
            },
        )
    page = await console.signed_in("alice")
    await page.goto(prompt_url(name))
    await check_page(page, "prompt")

    await page.get_by_role("link", name="Promote v2 to production").click()
    dialog = page.get_by_role("region", name="Promote v2 to production?")
    assert [words(await item.inner_text()) for item in await dialog.get_by_role("listitem").all()] == [
        "v1 production → archived (displaced)",
        "v2 draft → production",
    ]
    await check_page(page, "promote-confirm")
    await page.get_by_label("Reason").fill("Word limits read better")
    await page.get_by_role("button", name="Promote to production").click()
    await page.wait_for_url(f"**{prompt_url(name)}?changed=2&to=production")
    assert await page.get_by_role("status").inner_text() == "Version 2 is now production."
    async with live.api() as api:
        assert await states(api, name) == {2: "production", 1: "archived"}

    await page.get_by_role("link", name="Roll back production…").click()
    await page.get_by_role("button", name="Roll back").click()  # no reason yet: the browser refuses to send it
    assert page.url.endswith(f"{prompt_url(name)}/rollback")
    await page.get_by_label("Reason").fill("Summaries got longer")
    await check_page(page, "rollback-confirm")
    await page.get_by_role("button", name="Roll back").click()
    await page.wait_for_url(f"**{prompt_url(name)}?changed=1&to=production")
    async with live.api() as api:
        assert await states(api, name) == {2: "archived", 1: "production"}
        latest = (await history(api, name))[0]
    assert (latest["version"], latest["action"], latest["reason"], latest["actor"]) == (
        1,
        "rollback",
        "Summaries got longer",
        "alice",
    )
    timeline = page.get_by_role("region", name="History")
    assert "Summaries got longer" in await timeline.inner_text()
    await check_page(page, "prompt-after-rollback")


async def test_the_diff_shows_template_input_schema_and_model_config_side_by_side(
    console: Console, live: LiveRegistry
) -> None:
    name, config = unique("support/reply"), unique("small")
    async with live.api() as api:
        assert (await api.post("/v1/configs", json={"name": config})).status_code == 201
        for temperature in (0.2, 0.7):
            body = {"backend": "fault", "model": "tiny", "params": {"temperature": temperature}}
            assert (await api.post(f"/v1/configs/{config}/versions", json=body)).status_code == 201
        await create_prompt(api, name)
        await create_version(api, name, "Reply to {{ ticket }}.\nBe brief.", config={"name": config, "version": 1})
        await create_version(
            api,
            name,
            "Reply to {{ ticket }} in {{ language }}.\nBe brief.",
            config={"name": config, "version": 2},
            input_schema={"properties": {"ticket": {"type": "string"}, "language": {"type": "string"}}},
        )
    page = await console.signed_in("reader")
    await page.goto(prompt_url(name))
    await page.get_by_role("button", name="Show diff").click()
    await page.wait_for_url("**/diff?from=1&to=2")

    template = page.get_by_role("region", name="Template")
    assert await template.locator("tr.diff-changed td.code-left").text_content() == "removed: Reply to {{ ticket }}."
    assert await template.locator("tr.diff-changed td.code-right").text_content() == (
        "added: Reply to {{ ticket }} in {{ language }}."
    )
    assert await template.locator("tr.diff-same td.code-right").text_content() == "Be brief."
    schema = page.get_by_role("region", name="Input schema")
    assert "language" in await schema.inner_text()
    model_config = page.get_by_role("region", name="Model config")
    assert words(await model_config.locator("tbody tr").inner_text()) == "params.temperature 0.2 0.7"
    assert f"{config}@1 → {config}@2" in await model_config.inner_text()
    await check_page(page, "diff")


async def test_the_second_of_two_concurrent_promotions_is_told_who_moved_it(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "checkout/upsell", 3)
    alice = await console.signed_in("alice")
    bob = await console.signed_in("bob")
    await alice.goto(f"{prompt_url(name)}/versions/2/promote?to=production")
    await bob.goto(f"{prompt_url(name)}/versions/3/promote?to=production")

    await alice.get_by_label("Reason").fill("Shorter upsell")
    await alice.get_by_role("button", name="Promote to production").click()
    await alice.wait_for_url("**?changed=2&to=production")
    async with bob.expect_response(f"**{prompt_url(name)}/versions/3/promote") as answer:
        await bob.get_by_role("button", name="Promote to production").click()
    assert (await answer.value).status == 409

    conflict = bob.get_by_role("alertdialog")
    text = words(await conflict.inner_text())
    assert "Production is now held by v2, not v1 as your page showed." in text
    assert "Moved by alice" in text
    assert "Shorter upsell" in text
    await check_page(bob, "promote-conflict")
    async with live.api() as api:
        assert (await states(api, name))[3] == "draft"
    await conflict.get_by_role("link", name=f"Reload {name}").click()
    await bob.wait_for_url(f"**{prompt_url(name)}")


async def test_a_read_only_key_sees_no_controls_and_a_forged_promotion_is_refused(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "search/rerank", 2)
    page = await console.signed_in("reader")
    await page.goto(prompt_url(name))
    assert await page.get_by_role("link", name="Promote v2 to production").count() == 0
    assert await page.get_by_role("link", name="Roll back production…").count() == 0
    assert await page.get_by_role("link", name="Audit log").count() == 0
    await check_page(page, "prompt-read-only")
    await page.get_by_role("link", name="Open in playground").click()
    assert page.url.endswith(f"{prompt_url(name)}/playground")
    await page.goto(prompt_url(name))

    opened = await page.goto(f"{prompt_url(name)}/versions/2/promote?to=production")
    assert opened is not None
    assert opened.status == 403
    await check_page(page, "forbidden")
    # A forged form with this session's own valid CSRF token: the scope check still refuses it.
    await page.goto(prompt_url(name))
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    forged = await page.request.post(
        f"{prompt_url(name)}/versions/2/promote",
        form={"csrf": csrf or "", "to": "production", "expected_current": "1"},
        max_redirects=0,
    )
    assert forged.status == 403
    async with live.api() as api:
        assert await states(api, name) == {2: "draft", 1: "production"}


async def test_a_form_without_the_session_token_is_refused(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "search/expand", 2)
    page = await console.signed_in("alice")
    forged = await page.request.post(
        f"{prompt_url(name)}/versions/2/promote",
        form={"csrf": "0" * 64, "to": "production", "expected_current": "1"},
        max_redirects=0,
    )
    assert forged.status == 403
    async with live.api() as api:
        assert await states(api, name) == {2: "draft", 1: "production"}


async def test_the_audit_log_filters_by_resource(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "billing/explain", 1)
    page = await console.signed_in("admin")
    await page.get_by_role("link", name="Audit log").click()
    await page.get_by_label("Resource name").fill(name)
    await page.get_by_role("button", name="Filter").click()
    rows = page.get_by_role("row")
    actions = [await row.get_by_role("cell").nth(2).inner_text() for row in (await rows.all())[1:]]
    assert actions == ["prompt.promote", "prompt.version.create", "prompt.create"]
    await check_page(page, "audit")


async def tab_to(page: Any, target: Any, *, limit: int = 80) -> None:
    """Press Tab until ``target`` has the focus, as a keyboard user would."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await target.evaluate("element => element === document.activeElement"):
            return
    raise AssertionError(f"{target} cannot be reached with Tab")


async def test_signing_in_and_promoting_work_with_the_keyboard_alone(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "keyboard/only", 2)
    page = await console.page()
    await page.goto("/console/login")
    await tab_to(page, page.get_by_label("API key"))
    await page.keyboard.type(live.keys["alice"])
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/prompts")
    await tab_to(page, page.get_by_role("link", name=name))
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**{prompt_url(name)}")

    await tab_to(page, page.get_by_role("link", name="Promote v2 to production"))
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/versions/2/promote?to=production")
    await tab_to(page, page.get_by_label("Reason"))
    await page.keyboard.type("Checked with the keyboard")
    await tab_to(page, page.get_by_role("button", name="Promote to production"))
    await page.keyboard.press("Enter")
    await page.wait_for_url("**?changed=2&to=production")
    async with live.api() as api:
        assert await states(api, name) == {2: "production", 1: "archived"}
