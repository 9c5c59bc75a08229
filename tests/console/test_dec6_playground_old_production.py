"""The playground opens on the production version even when it is older than the hundred newest versions.

The playground looked for production among the hundred versions its picker lists; past a hundred versions an older
production version was not among them, so the playground opened on the latest draft instead, without saying so.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from tests.console.conftest import LiveRegistry
from tests.console.seed import prompt_with_versions
from tests.console.test_dec6_refused_forms import sign_in

LISTED = 100


async def test_the_playground_opens_on_an_old_production_version(live: LiveRegistry) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "old/production", LISTED + 1)  # v1 in production
    async with live.http() as client:
        await sign_in(client, live.keys["alice"])
        page = await client.get(f"/console/prompts/{quote(name, safe='')}/playground")
    assert page.status_code == 200, page.text
    picker = re.search(r'<input[^>]* name="version"[^>]*>', page.text)
    assert picker is not None
    assert 'value="1"' in picker.group(0)
