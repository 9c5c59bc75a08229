"""A prompt's page shows its versions a hundred at a time, and turns to the older ones.

Past a hundred versions the page showed the newest hundred and nothing else: the older ones (production among them,
when it is an old version) could not be promoted, archived or compared from the console, and no line said so.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import quote

from tests.console.conftest import LiveRegistry
from tests.console.seed import create_prompt, create_version, promote, unique
from tests.console.test_dec6_refused_forms import sign_in

SHOWN = 100


def version_rows(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<td class="strong">v(\d+)', html)]


async def test_versions_past_the_first_hundred_are_a_page_away(live: LiveRegistry) -> None:
    prompt = unique("many/versions")
    async with live.api() as api:
        await create_prompt(api, prompt)
        for i in range(SHOWN + 2):
            await create_version(api, prompt, f"Hello {{{{ name }}}} {i}")
        await promote(api, prompt, 1, "production", None)
    base = f"/console/prompts/{quote(prompt, safe='')}"
    async with live.http() as client:
        await sign_in(client, live.keys["alice"])
        newest = await client.get(base)
        assert newest.status_code == 200
        assert version_rows(newest.text) == list(range(SHOWN + 2, 2, -1))
        assert "Newest versions" not in newest.text
        older = re.search(r'<a class="button" href="([^"]+)">Older versions', newest.text)
        assert older is not None

        rest = await client.get(unescape(older.group(1)))
        assert rest.status_code == 200
        assert version_rows(rest.text) == [2, 1]
        assert "Older versions" not in rest.text
        assert f'<a class="button" href="{base}">← Newest versions</a>' in rest.text
        # Production's old version can be archived from there, as any version on the first page.
        assert f'href="{base}/versions/1/promote?to=archived"' in rest.text

        forged = await client.get(base, params={"cursor": "not-a-cursor"})
        assert forged.status_code == 400
        assert "cursor" in forged.text
