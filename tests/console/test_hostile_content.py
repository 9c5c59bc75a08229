"""Hostile text (markup, quotes, javascript: URLs) in every field a page shows appears as text and runs nothing."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from tests.console.conftest import HOSTILE_KEY_NAME, Console, LiveRegistry, check_page
from tests.console.seed import complete, create_prompt, create_version, promote, prompt_on_fault_backend, unique

DESCRIPTION = "<script>alert('description')</script> \"double\" 'single' <img src=x onerror=alert('img')>"
TEMPLATE = "<script>alert('template')</script> {{ name }} <a href=\"javascript:alert('link')\">click</a>"
COMMIT = "\"><img src=x onerror=alert('commit')> javascript:alert('commit')"
REASON = "</blockquote><script>alert('reason')</script>"
SEARCH = "\"><script>alert('search')</script>"


async def assert_inert(page: Any, *texts: str) -> None:
    """The page holds no script but the console's own files, no event handler attribute and no javascript: link,
    and shows ``texts`` as text."""
    own = "script[src^='/console/static/']:not(:empty)"
    assert await page.locator("script").count() == await page.locator("script[src^='/console/static/']").count()
    assert await page.locator(own).count() == 0  # a script of the console's has no inline body
    assert await page.locator("[onerror], [onload], [onclick]").count() == 0
    assert await page.locator("a[href^='javascript:' i]").count() == 0
    body = await page.locator("body").inner_text()
    for text in texts:
        assert text in body, text


async def test_hostile_text_is_shown_as_text_on_every_page(console: Console, live: LiveRegistry) -> None:
    name = unique("hostile/content")
    async with live.api() as api, live.api("hostile") as hostile:
        await create_prompt(api, name, description=DESCRIPTION, tags=["team:red"])
        await create_version(api, name, "Hello {{ name }}", commit_message="first")
        await create_version(api, name, TEMPLATE, commit_message=COMMIT)
        await promote(hostile, name, 1, "production", None, reason=REASON)
    base = f"/console/prompts/{quote(name, safe='')}"
    page = await console.signed_in("alice")

    await page.goto(f"/console/prompts?{urlencode({'q': SEARCH, 'tag': 'javascript:alert(1)'})}")
    await assert_inert(page)
    assert await page.get_by_label("Name starts with").input_value() == SEARCH
    await page.goto(f"/console/prompts?{urlencode({'q': 'hostile/'})}")
    await assert_inert(page, DESCRIPTION)
    await check_page(page, "hostile-prompts")

    await page.goto(base)
    await assert_inert(page, DESCRIPTION, COMMIT, REASON, HOSTILE_KEY_NAME)
    await check_page(page, "hostile-prompt")

    await page.goto(f"{base}/diff?from=1&to=2")
    await assert_inert(page, "<script>alert('template')</script>")
    await check_page(page, "hostile-diff")

    await page.goto(f"{base}/versions/2/promote?to=production")
    await assert_inert(page)
    # Someone else moves production first: the conflict page names them and their reason, as text.
    async with live.api("hostile") as hostile:
        await promote(hostile, name, 2, "staging", None, reason=REASON)
        await promote(hostile, name, 2, "production", 1, reason=REASON)
    await page.get_by_role("button", name="Promote to production").click()
    await assert_inert(page, HOSTILE_KEY_NAME, REASON)
    await check_page(page, "hostile-conflict")

    await page.goto(f"{base}/rollback")
    await assert_inert(page)
    await page.goto("/console/prompts/%3Cscript%3Ealert('missing')%3C%2Fscript%3E")
    await assert_inert(page, "<script>alert('missing')</script>")
    await check_page(page, "not-found")

    admin = await console.signed_in("admin")
    await admin.goto(f"/console/audit?{urlencode({'resource': name})}")
    await assert_inert(admin, HOSTILE_KEY_NAME)
    await check_page(admin, "hostile-audit")


async def test_hostile_text_is_shown_as_text_on_the_usage_key_and_webhook_pages(
    console: Console, live: LiveRegistry
) -> None:
    name = unique("hostile/usage")
    hostile_id = live.keys["hostile"].split("_")[1]
    url = f"{live.fault_url}/hooks/x?q=\"><script>alert('url')</script>"
    async with live.api() as api, live.api("hostile") as hostile:
        await prompt_on_fault_backend(api, name, prices=(1.0, 1.0))
        await complete(hostile, name, 1)
        assert (await api.put(f"/v1/keys/{hostile_id}/budget", json={"monthly_tokens": 100})).status_code == 200
        created = await api.post("/v1/webhooks", json={"url": url, "events": ["prompt.*"], "description": DESCRIPTION})
        assert created.status_code == 201, created.text
        webhook_id = created.json()["webhook"]["id"]
        assert (await api.post(f"/v1/webhooks/{webhook_id}/ping")).status_code == 202
    admin = await console.signed_in("admin")

    await admin.goto("/console/usage?by=key")
    await assert_inert(admin, f"{HOSTILE_KEY_NAME} ({hostile_id})")
    assert await admin.locator("svg script, svg [onload], svg a").count() == 0
    assert HOSTILE_KEY_NAME in await admin.get_by_role("region", name="Budgets this month").inner_text()
    await check_page(admin, "hostile-usage")

    await admin.goto("/console/keys")
    await assert_inert(admin, HOSTILE_KEY_NAME)
    await admin.goto(f"/console/keys/{hostile_id}")
    await assert_inert(admin, HOSTILE_KEY_NAME)
    await check_page(admin, "hostile-key")
    await admin.goto(f"/console/keys/{hostile_id}/revoke")
    await assert_inert(admin, HOSTILE_KEY_NAME)
    # A refused form shows the name as typed, in the field, not as markup.
    await admin.goto("/console/keys")
    await admin.get_by_label("Name").fill(SEARCH)
    await admin.get_by_role("button", name="Create key").click()
    await assert_inert(admin)
    assert await admin.get_by_label("Name").input_value() == SEARCH

    await admin.goto("/console/webhooks")
    await assert_inert(admin, DESCRIPTION)
    await admin.goto(f"/console/webhooks/{webhook_id}")
    await assert_inert(admin, DESCRIPTION, url)
    await check_page(admin, "hostile-webhook")


async def test_hostile_text_is_shown_as_text_on_the_experiment_pages(console: Console, live: LiveRegistry) -> None:
    prompt, key, unit = unique("hostile/experiment"), unique("hostile-test"), "<script>alert('unit')</script>"
    async with live.api() as api:
        await create_prompt(api, prompt, description=DESCRIPTION)
        await create_version(api, prompt, "Hello {{ name }}")
        await create_version(api, prompt, TEMPLATE)
        await promote(api, prompt, 1, "production", None)
        body = {
            "key": key,
            "prompt": prompt,
            "description": DESCRIPTION,
            "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
            "forced_variants": {unit: "treatment"},
        }
        created = await api.post("/v1/experiments", json=body)
        assert created.status_code == 201, created.text
    admin = await console.signed_in("admin")

    await admin.goto("/console/experiments")
    await assert_inert(admin, DESCRIPTION)
    await admin.goto(f"/console/experiments/{key}")
    await assert_inert(admin, DESCRIPTION)
    await admin.goto(f"/console/experiments/{key}/edit")
    await assert_inert(admin)
    assert await admin.get_by_label("Description").input_value() == DESCRIPTION
    assert await admin.get_by_label("Forced variants").input_value() == f"{unit} = treatment"
    await check_page(admin, "hostile-experiment-edit")
    await admin.goto(f"/console/experiments/{key}/start")
    await assert_inert(admin)
    # A refused form shows what was typed in its fields and its errors as text, never as markup.
    await admin.goto("/console/experiments/new")
    await admin.get_by_label("Key", exact=True).fill(SEARCH)
    await admin.get_by_label("Prompt", exact=True).fill(SEARCH)
    await admin.get_by_label("Variant 1 config").fill(SEARCH)
    await admin.get_by_role("button", name="Create draft").click()
    await assert_inert(admin)
    assert await admin.get_by_label("Key", exact=True).input_value() == SEARCH
    assert await admin.locator("#error-key").count() == 1


async def test_hostile_variables_templates_and_schemas_are_shown_as_text_in_the_playground(
    console: Console, live: LiveRegistry
) -> None:
    name, config = unique("hostile/playground"), unique("hostile-config")
    title, description = "\"><script>alert('title')</script>", "<img src=x onerror=alert('description')>"
    variable = "<script>alert('variable')</script> \"quoted\" javascript:alert('v')"
    model = "ok/<script>alert('model')</script>"
    async with live.api() as api:
        assert (await api.post("/v1/configs", json={"name": config})).status_code == 201
        created = await api.post(f"/v1/configs/{config}/versions", json={"backend": "fault", "model": model})
        assert created.status_code == 201, created.text
        await create_prompt(api, name, description=DESCRIPTION)
        schema = {
            "properties": {
                "name": {"type": "string", "title": title, "description": description},
                "tone": {"enum": ["<script>alert('enum')</script>", "plain"]},
            },
            "required": ["name"],
        }
        await create_version(
            api, name, TEMPLATE, commit_message=COMMIT, input_schema=schema, config={"name": config, "version": 1}
        )
    page = await console.signed_in("alice")
    await page.goto(f"/console/prompts/{quote(name, safe='')}/playground")
    await assert_inert(page, title, description, model)
    assert await page.get_by_role("combobox", name="tone").locator("option").all_inner_texts() == [
        "—",
        "<script>alert('enum')</script>",
        "plain",
    ]

    await page.get_by_label(title).fill(variable)
    await page.get_by_role("button", name="Render").click()
    await assert_inert(page, variable, "<script>alert('template')</script>")
    assert await page.get_by_label(title).input_value() == variable

    await page.get_by_role("button", name="Run", exact=True).click()
    await page.locator("[data-usage='cost']").wait_for()
    await assert_inert(page, model)
    assert await page.locator("template script, [slot] script").count() == 0
    await check_page(page, "hostile-playground")
