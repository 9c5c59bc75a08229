"""A prompt's page shows its rollouts five at a time, and turns to the older ones.

The page showed the five newest rollouts and nothing else: an older rollout (its steps, why it was aborted or rolled
back) had no link anywhere in the console, and no line said more existed.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import quote

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import prompt_with_versions, unique
from tests.console.test_dec6_refused_forms import sign_in
from tests.console.test_rollouts_page import HELD

SHOWN = 5


def rollout_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<a class="strong" href="/console/rollouts/(\d+)">', html)]


def link(html: str, text: str) -> str | None:
    found = re.search(rf'<a class="button" href="([^"]+)">{re.escape(text)}', html)
    return unescape(found.group(1)) if found else None


async def prompt_with_rollouts(live: LiveRegistry, count: int) -> tuple[str, list[int]]:
    """A prompt with ``count`` rollouts of v2, all aborted but the newest, which runs (and so holds production)."""
    async with live.api() as api:
        name = await prompt_with_versions(api, "support/many-rollouts", 2)
        metric = unique("errors")
        assert (await api.post("/v1/metrics", json={"key": metric, "kind": "binomial"})).status_code == 201
        body = {
            "candidate_version": 2,
            "steps": [{"share": 0.05, "min_units": HELD}, {"share": 1.0}],
            "guardrails": [{"metric": metric, "tolerance": 0.02, "relative": False}],
        }
        ids = []
        for i in range(count):
            created = await api.post(f"/v1/prompts/{quote(name, safe='')}/rollouts", json=body)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
            if i < count - 1:
                aborted = await api.post(f"/v1/rollouts/{ids[-1]}/abort", json={"reason": f"try {i}"})
                assert aborted.status_code == 200, aborted.text
    return name, ids[::-1]


async def test_rollouts_past_the_five_newest_are_a_page_away_and_the_running_one_still_holds_production(
    live: LiveRegistry,
) -> None:
    name, newest_first = await prompt_with_rollouts(live, SHOWN + 2)
    base = f"/console/prompts/{quote(name, safe='')}"
    async with live.http() as client:
        await sign_in(client, live.keys["alice"])
        newest = await client.get(base)
        assert newest.status_code == 200
        assert rollout_ids(newest.text) == newest_first[:SHOWN]
        assert link(newest.text, "← Newest rollouts") is None
        older = link(newest.text, "Older rollouts →")
        assert older is not None
        assert older.startswith(f"{base}?rollouts=")

        rest = await client.get(older.split("#", 1)[0])
        assert rest.status_code == 200
        assert rollout_ids(rest.text) == newest_first[SHOWN:]
        assert link(rest.text, "Older rollouts →") is None
        assert link(rest.text, "← Newest rollouts") == f"{base}#rollouts-title"
        # The newest rollout, on the first page only, still holds production on this one: no move of it is offered.
        assert 'id="rollout-holds-production"' in rest.text
        assert f'href="{base}/versions/2/promote?to=production"' not in rest.text

        forged = await client.get(base, params={"rollouts": "not-a-cursor"})
        assert forged.status_code == 400
        assert "cursor" in forged.text


async def test_the_rollouts_pager_shows_on_screen(console: Console, live: LiveRegistry) -> None:
    name, _ = await prompt_with_rollouts(live, SHOWN + 1)
    page = await console.signed_in("reader")
    await page.goto(f"/console/prompts/{quote(name, safe='')}")
    await page.get_by_role("navigation", name="Rollouts pages").get_by_role("link", name="Older rollouts →").click()
    await page.wait_for_url("**rollouts=**")
    assert await page.locator("#rollouts tbody tr").count() == 1
    await check_page(page, "console_prompt_rollouts_older")
