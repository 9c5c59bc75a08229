"""A prompt's versions table fits its card at 1280 pixels: every row's buttons are in sight, none scrolled away.

A draft version's buttons (Staging, Promote, Archive) did not wrap, so the table was wider than its card and the Archive
button of every draft, and of production, sat past the card's edge, reached only by scrolling the table sideways.
"""

from __future__ import annotations

from urllib.parse import quote

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import prompt_with_versions


async def test_every_version_action_is_inside_the_versions_card(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api:
        prompt = await prompt_with_versions(api, "actions-fit/long-folder-name/greeting", 3)
    page = await console.signed_in("alice")
    await page.goto(f"/console/prompts/{quote(prompt, safe='')}")
    card = page.locator("section[aria-labelledby=versions-title]")

    overflow = await card.evaluate("card => card.scrollWidth - card.clientWidth")
    edge = await card.bounding_box()
    archives = page.get_by_role("link", name="Archive v")

    assert overflow <= 0
    assert edge is not None
    assert await archives.count() == 3  # the two drafts and production
    for box in [await archives.nth(i).bounding_box() for i in range(3)]:
        assert box is not None
        assert box["x"] + box["width"] <= edge["x"] + edge["width"]
    await check_page(page, "prompt-version-actions-fit")
