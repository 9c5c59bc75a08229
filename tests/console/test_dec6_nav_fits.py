"""The main navigation of an admin (all nine sections) fits on one line at 1280 pixels, and stays usable narrower.

At 1280 pixels "API keys" and "Audit log" each broke onto two lines, so the bar showed a ragged second row; narrower,
the bar ran past the window's edge. Checked on the layout itself (boxes and line counts), not by looking.
"""

from __future__ import annotations

from typing import Any

from tests.console.conftest import Console, LiveRegistry, check_page, sign_in
from tests.console.seed import unique

SECTIONS = [
    "Prompts",
    "Experiments",
    "Evaluations",
    "Playground",
    "Usage",
    "API keys",
    "Webhooks",
    "Alerts",
    "Audit log",
]
# Each link's box, and how many lines its text takes (a range's client rects: one per line box).
LAYOUT = """() => {
  const box = (e) => { const r = e.getBoundingClientRect(); return {top: r.top, left: r.left, right: r.right}; };
  const bar = document.querySelector('.topbar-inner');
  return {
    links: [...document.querySelectorAll('.mainnav a')].map((a) => {
      const range = document.createRange();
      range.selectNodeContents(a);
      return {text: a.textContent.trim(), lines: range.getClientRects().length, ...box(a)};
    }),
    nav: box(document.querySelector('.mainnav')),
    brand: box(document.querySelector('.brand')),
    who: box(document.querySelector('.who')),
    nameCut: (() => { const n = document.querySelector('.who-name'); return n.scrollWidth > n.clientWidth; })(),
    overflow: bar.scrollWidth - bar.clientWidth,
  };
}"""


async def layout(page: Any) -> dict[str, Any]:
    found: dict[str, Any] = await page.evaluate(LAYOUT)
    assert [link["text"] for link in found["links"]] == SECTIONS
    assert {link["text"]: link["lines"] for link in found["links"]} == dict.fromkeys(SECTIONS, 1)
    assert len({round(link["top"]) for link in found["links"]}) == 1, found["links"]  # one row
    assert found["overflow"] <= 0  # nothing runs past the bar's edge
    return found


async def test_an_admins_sections_fit_on_one_line_at_1280_pixels_beside_a_long_key_name(
    console: Console, live: LiveRegistry
) -> None:
    page = await console.signed_in("admin")
    await page.goto("/console/keys")
    found = await layout(page)
    assert found["brand"]["right"] <= found["nav"]["left"]
    assert found["links"][-1]["right"] <= found["who"]["left"]
    assert not found["nameCut"]  # "admin" is shown whole beside them
    # The bar's single row: the brand, every section and the sign-out share one line.
    assert abs(found["brand"]["top"] - found["links"][0]["top"]) < 10
    await check_page(page, "console_nav_1280")

    # A key with a long name and every scope is cut short beside the sections, which keep their line.
    name = unique("platform-operations-on-call-rotation")
    async with live.api() as api:
        made = await api.post("/v1/keys", json={"name": name, "scopes": ["admin", "analyze", "read"]})
    assert made.status_code == 201, made.text
    long_named = await console.page()
    await sign_in(long_named, made.json()["key"])
    await long_named.goto("/console/audit")
    found = await layout(long_named)
    assert found["links"][-1]["right"] <= found["who"]["left"]
    assert await long_named.locator(".who-name").get_attribute("title") == f"Signed in with the API key {name}"
    await check_page(long_named, "console_nav_1280_long_key_name")


async def test_narrower_the_sections_take_a_row_of_their_own_and_each_is_reachable(console: Console) -> None:
    page = await console.signed_in("admin")
    for width in (1024, 390):
        await page.set_viewport_size({"width": width, "height": 800})
        await page.goto("/console/prompts")
        found = await layout(page)
        assert found["links"][0]["top"] > found["brand"]["top"]  # under the brand and the sign-out, not beside them
        await check_page(page, f"console_nav_{width}")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    await page.wait_for_url("**/console/audit")
