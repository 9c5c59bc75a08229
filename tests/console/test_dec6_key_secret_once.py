"""A new API key's secret is shown once, on a page the form redirects to: a reload shows it no more and makes no key.

The secret was the form's own answer, so reloading that page (or going back to it) made the browser offer to send the
form again, which created a second key; now the form redirects (303) to a page that takes the sealed secret from the
server once, and every later read of that page says the secret was shown once.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import unique
from tests.console.test_dec6_refused_forms import csrf_of, sign_in

SHOWN_ONCE = "The key was shown once"


async def keys_named(live: LiveRegistry, name: str) -> list[dict[str, Any]]:
    async with live.api() as api:
        listed = (await api.get("/v1/keys", params={"include_revoked": "true", "limit": 200})).json()["items"]
    return [k for k in listed if k["name"] == name]


async def test_reloading_going_back_and_forward_to_a_created_key_shows_no_secret_and_makes_no_key(
    console: Console, live: LiveRegistry
) -> None:
    name = unique("reload-me")
    page = await console.signed_in("admin")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    await page.goto("/console/keys")
    await page.get_by_label("Name").fill(name)
    await page.get_by_role("checkbox", name="read").check()
    async with page.expect_response(lambda r: r.url.endswith("/console/keys") and r.request.method == "POST") as info:
        await page.get_by_role("button", name="Create key").click()
    answered = await info.value
    assert answered.status == 303
    await page.wait_for_url("**/created?**")
    secret = await page.get_by_label("API key").input_value()
    assert secret.startswith("prk_")
    assert secret not in page.url
    assert secret not in answered.headers["location"]
    await check_page(page, "console_key_created")

    await page.reload()
    assert await page.get_by_label("API key").count() == 0
    assert SHOWN_ONCE in await page.locator("#secret-shown").inner_text()
    assert secret not in await page.content()
    await check_page(page, "console_key_created_reloaded")

    await page.get_by_role("link", name="Done").click()
    await page.wait_for_url("**/console/keys")
    await page.go_back()
    assert "/created?" in page.url
    assert secret not in await page.content()
    assert SHOWN_ONCE in await page.locator("#secret-shown").inner_text()
    await page.go_forward()
    assert page.url.endswith("/console/keys")

    assert posts == [f"{live.url}/console/keys"]  # the form was sent once, by its button
    assert len(await keys_named(live, name)) == 1


async def test_a_created_keys_secret_opens_only_in_the_session_that_created_it(live: LiveRegistry) -> None:
    name = unique("own-session")
    async with live.http() as creator, live.http() as other:
        await sign_in(creator, live.keys["admin"])
        await sign_in(other, live.keys["admin"])
        form = await creator.get("/console/keys")
        created = await creator.post(
            "/console/keys", data={"csrf": csrf_of(form.text), "name": name, "scope_read": "on"}
        )
        assert created.status_code == 303
        location = created.headers["location"]
        assert location.startswith("/console/keys/")
        assert "/created?shown=" in location

        elsewhere = await other.get(location)  # another sign-in of the same key: the URL alone opens nothing
        assert elsewhere.status_code == 200
        assert SHOWN_ONCE in elsewhere.text
        assert "prk_" not in elsewhere.text

        first = await creator.get(location)
        secret = _secret_in(first)
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {secret}"}) as api:
            assert (await api.get("/v1/prompts")).status_code == 200
        again = await creator.get(location)
        assert SHOWN_ONCE in again.text
        assert secret not in again.text
    assert len(await keys_named(live, name)) == 1


def _secret_in(response: httpx.Response) -> str:
    assert response.status_code == 200
    marker = 'id="secret" class="secret mono" readonly value="'
    assert marker in response.text, response.text
    return response.text.split(marker, 1)[1].split('"', 1)[0]
