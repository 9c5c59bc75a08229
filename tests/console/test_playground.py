"""The playground: a form from the input schema, render, runs streaming into the page, two versions side by side."""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any
from urllib.parse import quote

import httpx
from playwright.async_api import Error as PlaywrightError

from registry.console.formatting import cost
from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import create_prompt, create_version, promote, unique

# The text streamed so far into the first column, and whether the run's usage block is there yet, read at once.
STREAMED_SO_FAR = (
    "() => [[...document.querySelectorAll('[slot=a]')].map(e => e.textContent).join(''),"
    " document.querySelector('[data-usage=cost]') !== null]"
)
FAULT_PROMPT_TOKENS = 7  # what the fault server reports for every prompt


async def column_text(page: Any, side: str) -> str:
    """What one column shows: its heading, its streamed text and its outcome (slotted into the column's region)."""
    parts = await page.locator(f"[slot='{side}-head'], [slot='{side}'], [slot='{side}-foot']").all_inner_texts()
    return " ".join(" ".join(parts).split())


def playground_url(name: str) -> str:
    return f"/console/prompts/{quote(name, safe='')}/playground"


async def fault_config(api: httpx.AsyncClient, behaviour: str, *, max_tokens: int, prices: tuple[float, float]) -> str:
    """A model config in production on the fault server whose model name picks its behaviour; returns its name."""
    config = unique("playground-config")
    assert (await api.post("/v1/configs", json={"name": config})).status_code == 201
    created = await api.post(
        f"/v1/configs/{config}/versions",
        json={
            "backend": "fault",
            "model": f"{behaviour}/{config}",
            "params": {"max_tokens": max_tokens},
            "input_price_per_mtok": prices[0],
            "output_price_per_mtok": prices[1],
        },
    )
    assert created.status_code == 201, created.text
    return config


def spend(output_tokens: int, prices: tuple[float, float]) -> str:
    return cost((FAULT_PROMPT_TOKENS * prices[0] + output_tokens * prices[1]) / 1_000_000)


async def usage_of(api: httpx.AsyncClient, name: str, *group_by: str) -> list[dict[str, Any]]:
    response = await api.get("/v1/usage", params={"prompt": name, "group_by": list(group_by)})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


SCHEMA = {
    "properties": {
        "name": {"type": "string", "maxLength": 80, "title": "Customer name"},
        "tone": {"enum": ["formal", "casual"], "description": "How the reply sounds"},
        "count": {"type": "integer", "minimum": 1},
        "urgent": {"type": "boolean"},
        "topics": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object"},
    },
    "required": ["name", "tone", "count"],
}
TEMPLATE = (
    "Dear {{ name }} ({{ tone }}), {{ count + 1 }} items:{% for t in topics %} [{{ t }}]{% endfor %}"
    "{% if urgent %} URGENT{% endif %} via {{ meta.source }}"
)


async def test_a_version_renders_from_the_form_its_input_schema_builds(console: Console, live: LiveRegistry) -> None:
    name = unique("playground/render")
    async with live.api() as api:
        await create_prompt(api, name)
        await create_version(api, name, TEMPLATE, input_schema=SCHEMA)
    page = await console.signed_in("reader")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").click()
    await page.get_by_role("search", name="Search prompts").get_by_label("Name starts with").fill("playground/")
    await page.get_by_role("button", name="Search").click()
    await check_page(page, "playground-prompts")
    await page.get_by_role("link", name=name, exact=True).click()
    await page.wait_for_url(f"**{playground_url(name)}")
    # Each type gets its own input.
    assert await page.get_by_label("Customer name").get_attribute("type") == "text"
    assert await page.get_by_role("combobox", name="tone").count() == 1
    assert await page.get_by_role("spinbutton", name="count").count() == 1
    assert await page.get_by_role("checkbox", name="urgent").count() == 1
    assert await page.get_by_label("topics").evaluate("e => e.tagName") == "TEXTAREA"
    assert await page.get_by_label("meta").evaluate("e => e.tagName") == "TEXTAREA"
    await check_page(page, "playground")

    await page.get_by_label("Customer name").fill("Ada")
    await page.get_by_role("combobox", name="tone").select_option("casual")
    await page.get_by_role("spinbutton", name="count").fill("2")
    await page.get_by_role("checkbox", name="urgent").check()
    await page.get_by_label("topics").fill("billing\nrefunds\n")
    await page.get_by_label("meta").fill('{"source": "email"}')
    await page.get_by_role("button", name="Render").click()
    rendered = page.get_by_role("region", name="Rendered v1")
    assert await rendered.locator(".output").inner_text() == (
        "Dear Ada (casual), 3 items: [billing] [refunds] URGENT via email"
    )
    assert await page.get_by_label("Customer name").input_value() == "Ada"  # the form keeps what was sent
    await check_page(page, "playground-rendered")

    # A value that cannot be read is named next to its field, and nothing renders.
    await page.get_by_label("meta").fill("{not json")
    await page.get_by_role("button", name="Render").click()
    assert "meta: is not valid JSON" in " ".join((await page.get_by_role("alert").inner_text()).split())
    assert await page.get_by_role("region", name="Rendered v1").count() == 0


async def test_a_run_streams_its_tokens_into_the_page_then_shows_usage_and_cost(
    console: Console, live: LiveRegistry
) -> None:
    name, prices = unique("playground/stream"), (1000.0, 2000.0)
    async with live.api() as api:
        # One token every 0.15 s: the page is painted while the answer is still coming.
        config = await fault_config(api, "trickle:0.15", max_tokens=5, prices=prices)
        await create_prompt(api, name)
        await create_version(api, name, "Say hello to {{ who }}.", config={"name": config, "version": 1})
        await promote(api, name, 1, "production", None)
    page = await console.signed_in("alice")
    await page.goto(playground_url(name))
    await page.get_by_label("who").fill("Ada")
    await page.get_by_role("button", name="Run", exact=True).click()

    states = [""]
    for _ in range(10_000):  # polls, not time: the loop ends when the usage block arrives
        try:
            text, finished = await page.evaluate(STREAMED_SO_FAR)
        except PlaywrightError:  # the form's page is being replaced by the run's: read again
            continue
        if text != states[-1]:
            states.append(text)
        if finished:
            break
    final = "Hello from the fault server"
    assert states[-1] == final
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(states))
    assert len([s for s in states if s and s != final]) >= 1, f"the text arrived in one paint: {states}"
    assert await page.get_by_role("region", name="Output of v1").count() == 1
    assert final in await column_text(page, "a")
    assert await page.locator("[data-usage='input']").inner_text() == str(FAULT_PROMPT_TOKENS)
    assert await page.locator("[data-usage='output']").inner_text() == "5"
    assert await page.locator("[data-usage='cost']").inner_text() == spend(5, prices)
    await check_page(page, "playground-run")
    # The run is a completion like any other: in usage, on the key that ran it.
    async with live.api() as api:
        rows = await usage_of(api, name, "key")
    assert [(row["key"], row["requests"], row["output_tokens"]) for row in rows] == [
        (live.keys["alice"].split("_")[1], 1, 5)
    ]


async def test_two_versions_run_side_by_side_on_the_same_variables(console: Console, live: LiveRegistry) -> None:
    name, cheap, dear = unique("playground/side-by-side"), (1.0, 1.0), (3000.0, 4000.0)
    async with live.api() as api:
        own = await fault_config(api, "trickle:0.05", max_tokens=4, prices=cheap)
        other = await fault_config(api, "ok", max_tokens=8, prices=dear)
        await create_prompt(api, name)
        await create_version(api, name, "Greet {{ who }}.", config={"name": own, "version": 1})
        await create_version(api, name, "Welcome {{ who }} warmly.", config={"name": own, "version": 1})
    page = await console.signed_in("reader")
    await page.goto(playground_url(name))
    await page.get_by_label("Version", exact=True).fill("1")
    await page.get_by_label("Side by side with").fill("2")
    await page.get_by_label("Its model config").fill(f"{other}@1")
    await page.get_by_role("button", name="Use these versions").click()
    await page.get_by_label("who").fill("Grace")
    await page.get_by_role("button", name="Render").click()
    assert await page.get_by_role("region", name="Rendered v1 (1 of 2)").locator(".output").inner_text() == (
        "Greet Grace."
    )
    assert await page.get_by_role("region", name="Rendered v2 (2 of 2)").locator(".output").inner_text() == (
        "Welcome Grace warmly."
    )

    await page.get_by_role("button", name="Run both").click()
    await page.locator("[slot='a-foot'] [data-usage='cost']").wait_for()
    await page.locator("[slot='b-foot'] [data-usage='cost']").wait_for()
    assert await page.get_by_role("region", name="Output of v1 (1 of 2)").count() == 1
    assert await page.get_by_role("region", name="Output of v2 (2 of 2)").count() == 1
    left, right = await column_text(page, "a"), await column_text(page, "b")
    assert "Hello from the fault" in left
    assert f"{own}@1" in left
    assert "Hello from the" in right
    assert f"{other}@1" in right  # the config chosen for it, not its own
    assert await page.locator("[slot='a-foot'] [data-usage='cost']").inner_text() == spend(4, cheap)
    assert await page.locator("[slot='b-foot'] [data-usage='cost']").inner_text() == spend(3, dear)
    await check_page(page, "playground-side-by-side")
    async with live.api() as api:
        rows = await usage_of(api, name, "version", "config")
    assert sorted((row["version"], row["config"], row["requests"]) for row in rows) == [(1, own, 1), (2, other, 1)]


async def test_a_forged_run_without_the_form_token_is_refused_and_runs_nothing(
    console: Console, live: LiveRegistry
) -> None:
    name = unique("playground/forged")
    async with live.api() as api:
        config = await fault_config(api, "ok", max_tokens=3, prices=(1.0, 1.0))
        await create_prompt(api, name)
        await create_version(api, name, "Hi {{ who }}.", config={"name": config, "version": 1})
    page = await console.signed_in("reader")
    await page.goto(playground_url(name))
    form = {"version": "1", "var.who": "Ada"}
    forged = await page.request.post(f"{playground_url(name)}/run", form=form, max_redirects=0)
    assert forged.status == 403
    wrong = await page.request.post(f"{playground_url(name)}/run", form={**form, "csrf": "0" * 64}, max_redirects=0)
    assert wrong.status == 403
    # Without a session at all, the run goes to sign-in.
    async with live.http() as anonymous:
        response = await anonymous.post(f"{playground_url(name)}/run", data=form)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/console/login")
    async with live.api() as api:
        assert await usage_of(api, name, "key") == []


async def cancelled_completions(live: LiveRegistry) -> float:
    """The server's count of completions recorded as cancelled, from its metrics."""
    async with live.http() as http:
        exposition = (await http.get("/metrics")).text
    pattern = r'^registry_completions_total\{[^}]*status="cancelled"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, exposition, flags=re.MULTILINE))


async def test_leaving_the_page_during_a_run_stops_it_and_records_it_as_cancelled(
    console: Console, live: LiveRegistry
) -> None:
    name = unique("playground/leave")
    async with live.api() as api:
        config = await fault_config(api, "trickle:0.2", max_tokens=50, prices=(1.0, 1.0))
        await create_prompt(api, name)
        await create_version(api, name, "Hi {{ who }}.", config={"name": config, "version": 1})
    before = await cancelled_completions(live)
    page = await console.signed_in("reader")
    await page.goto(playground_url(name))
    await page.get_by_label("who").fill("Ada")
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.locator("[slot='a']").first.wait_for()  # the first token is on the page
    await page.goto("/console/playground")  # and the page is left while the others are coming
    for _ in range(500):  # polls, not time: the server records the run once it sees the browser go
        if await cancelled_completions(live) > before:
            break
        await asyncio.sleep(0.02)
    assert await cancelled_completions(live) == before + 1
    async with live.api() as api:
        (row,) = await usage_of(api, name, "key")
    assert row["requests"] == 1
    assert 1 <= row["output_tokens"] < 50  # what was generated before the page was left, and no more


async def test_a_chat_version_renders_its_messages_and_runs_on_the_chat_endpoint(
    console: Console, live: LiveRegistry
) -> None:
    name = unique("playground/chat")
    messages = [{"role": "system", "content": "Answer in {{ language }}."}, {"role": "user", "content": "{{ q }}"}]
    async with live.api() as api:
        config = await fault_config(api, "ok", max_tokens=8, prices=(1.0, 1.0))
        await create_prompt(api, name)
        response = await api.post(
            f"/v1/prompts/{quote(name, safe='')}/versions",
            json={"kind": "chat", "messages": messages, "config": {"name": config, "version": 1}},
        )
        assert response.status_code == 201, response.text
    page = await console.signed_in("reader")
    await page.goto(playground_url(name))
    await page.get_by_label("language").fill("French")
    await page.get_by_label("q").fill("Where is the station?")
    await page.get_by_role("button", name="Render").click()
    rendered = page.get_by_role("region", name="Rendered v1").get_by_role("listitem")
    # The role reads in capitals, as the CSS shows it.
    assert [" ".join((await item.inner_text()).split()) for item in await rendered.all()] == [
        "SYSTEM Answer in French.",
        "USER Where is the station?",
    ]
    await check_page(page, "playground-chat")
    await page.get_by_role("button", name="Run", exact=True).click()
    await page.locator("[data-usage='cost']").wait_for()
    assert "Hello from the" in await column_text(page, "a")
