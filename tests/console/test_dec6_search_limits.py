"""A search or filter box takes no more than its page accepts.

The prompt search, its tag filter, the playground's search and the audit log's filters had no length limit: a longer
text (a pasted line) was sent, refused as a whole with a 'Validation failed' page, and the search was gone. Each box now
stops at the longest value its page serves, which the test finds by sending that value and one character more.
"""

from __future__ import annotations

import re

from tests.console.conftest import LiveRegistry
from tests.console.test_dec6_refused_forms import sign_in

BOXES = {
    "/console/prompts": ("q", "tag"),
    "/console/playground": ("q",),
    "/console/audit": ("actor", "resource_type", "resource"),
}


async def test_every_search_box_stops_at_what_its_page_accepts(live: LiveRegistry) -> None:
    async with live.http() as client:
        await sign_in(client, live.keys["admin"])
        for page, names in BOXES.items():
            html = (await client.get(page)).text
            for name in names:
                box = re.search(rf'<input [^>]*name="{name}"[^>]*>', html)
                assert box is not None, f"{page}: no box {name}"
                limit = re.search(r'maxlength="(\d+)"', box.group(0))
                assert limit is not None, f"{page}: {name} takes any length"
                longest = int(limit.group(1))
                assert (await client.get(page, params={name: "a" * longest})).status_code == 200, (page, name)
                assert (await client.get(page, params={name: "a" * (longest + 1)})).status_code == 422, (page, name)
