"""A prompt page's notice of a change is shown only while the change stands.

After a promotion the page's address carries the change (``?changed=2&to=production``). Reloading it, or coming back to
it, after someone had moved production again showed 'Version 2 is now production.' over a page whose production was
another version.
"""

from __future__ import annotations

from urllib.parse import quote

from tests.console.conftest import LiveRegistry
from tests.console.seed import prompt_with_versions
from tests.console.test_dec6_refused_forms import csrf_of, sign_in

NOTICE = "Version 2 is now production."


async def test_a_change_undone_since_is_not_announced_again(live: LiveRegistry) -> None:
    async with live.api() as api:
        prompt = await prompt_with_versions(api, "stale-notice/greeting", 2)
    base = f"/console/prompts/{quote(prompt, safe='')}"
    async with live.http() as client:
        await sign_in(client, live.keys["alice"])
        dialog = await client.get(f"{base}/versions/2/promote", params={"to": "production"})
        promoted = await client.post(
            f"{base}/versions/2/promote",
            data={"csrf": csrf_of(dialog.text), "to": "production", "expected_current": "1"},
        )
        assert promoted.status_code == 303
        landing = promoted.headers["location"]
        assert NOTICE in (await client.get(landing)).text

        async with live.api() as api:
            rollback = {"reason": "back to v1", "version": 1, "expected_current": 2}
            rolled = await api.post(f"/v1/prompts/{quote(prompt, safe='')}/rollback", json=rollback)
            assert rolled.status_code == 200, rolled.text
        reloaded = await client.get(landing)
    assert reloaded.status_code == 200
    assert NOTICE not in reloaded.text
