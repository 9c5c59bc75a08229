"""Signing in and out of the console: a server-side session behind an HttpOnly, SameSite=Strict cookie."""

from __future__ import annotations

import re
from pathlib import Path

from litestar.routes import HTTPRoute

from registry.app import create_app
from registry.auth.access import SCOPE_OPT
from registry.auth.keys import Scope
from registry.console.controller import PUBLIC_OPT
from registry.settings import Settings
from tests.console.conftest import Console, LiveRegistry, check_page, sign_in
from tests.console.seed import prompt_with_versions


async def test_sign_in_shows_prompts_and_sign_out_ends_the_session(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        await prompt_with_versions(api, "greeting", 2, description="Greets a customer by name.", tags=["team:support"])
    page = await console.page()
    await page.goto("/console/prompts")
    await page.wait_for_url("**/console/login?next=%2Fconsole%2Fprompts")
    await check_page(page, "sign-in")

    await sign_in(page, live.keys["alice"])
    assert await page.get_by_role("heading", name="Prompts").is_visible()
    assert live.keys["alice"] not in await page.content()
    await check_page(page, "prompts")
    session_cookie = next(c for c in await page.context.cookies() if c["name"] == "registry_console")
    assert session_cookie["httpOnly"] is True
    assert session_cookie["sameSite"] == "Strict"
    assert session_cookie["path"] == "/console"
    assert live.keys["alice"] not in session_cookie["value"]

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/console/login?signed_out=true")
    assert await page.get_by_text("You are signed out.").is_visible()
    # The old cookie no longer opens a page: the session is gone on the server, not only in the browser.
    async with live.http() as http:
        http.cookies.set("registry_console", session_cookie["value"])
        stale = await http.get("/console/prompts")
    assert stale.status_code == 303
    assert stale.headers["location"].startswith("/console/login")


async def test_a_wrong_key_is_refused_and_not_echoed(console: Console, live: LiveRegistry) -> None:
    page = await console.page()
    await page.goto("/console/login")
    wrong = "prk_abcdefghijkm_" + "x" * 43
    await page.get_by_label("API key").fill(wrong)
    async with page.expect_response("**/console/login") as answer:
        await page.get_by_role("button", name="Sign in").click()
    assert (await answer.value).status == 401
    alert = await page.get_by_role("alert").inner_text()
    assert alert == "That API key is not valid, or it was revoked or has expired."
    assert wrong not in await page.content()
    assert "registry_console" not in {c["name"] for c in await page.context.cookies()}
    await check_page(page, "sign-in-refused")


async def test_pages_carry_a_content_security_policy_without_inline_script(live: LiveRegistry) -> None:
    async with live.http() as http:
        response = await http.get("/console/login")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["cache-control"] == "no-store"


async def test_the_cookie_is_secure_behind_a_tls_proxy(live: LiveRegistry) -> None:
    async with live.http() as http:
        plain = await http.get("/console/login")
        behind_tls = await http.get("/console/login", headers={"X-Forwarded-Proto": "https"})
    assert not re.search(r";\s*secure", plain.headers["set-cookie"], re.IGNORECASE)
    assert re.search(r";\s*secure", behind_tls.headers["set-cookie"], re.IGNORECASE)


async def test_sign_in_without_the_form_token_is_refused(live: LiveRegistry) -> None:
    async with live.http() as http:
        response = await http.post("/console/login", data={"api_key": live.keys["alice"]})
    assert response.status_code == 403
    assert "registry_console=" not in response.headers.get("set-cookie", "")


async def test_a_key_that_cannot_read_cannot_sign_in(live: LiveRegistry) -> None:
    async with live.http() as http:
        form = await http.get("/console/login")
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', form.text)
        assert csrf is not None
        answer = await http.post("/console/login", data={"api_key": live.keys["writer"], "csrf": csrf.group(1)})
    assert answer.status_code == 403
    assert "cannot read prompts" in answer.text
    assert "registry_console=" not in answer.headers.get("set-cookie", "")


def test_every_console_route_declares_a_scope_or_is_public(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", redis_url=None))
    routes = [r for r in app.routes if isinstance(r, HTTPRoute) and r.path.startswith("/console")]
    assert len(routes) > 10
    for route in routes:
        for handler in route.route_handlers:
            if route.path.startswith("/console/static") or handler.http_methods == {"OPTIONS"}:
                continue
            assert handler.opt.get(PUBLIC_OPT) or isinstance(handler.opt.get(SCOPE_OPT), Scope), route.path
