"""A prompt with no versions yet offers no playground: the link led to an error page ('has no versions yet')."""

from __future__ import annotations

from urllib.parse import quote

from tests.console.conftest import LiveRegistry
from tests.console.seed import create_prompt, create_version, unique
from tests.console.test_dec6_refused_forms import sign_in


async def test_the_playground_is_offered_once_a_version_exists(live: LiveRegistry) -> None:
    name = unique("no-versions/yet")
    base = f"/console/prompts/{quote(name, safe='')}"
    link = f'href="{base}/playground"'
    async with live.api() as api:
        await create_prompt(api, name)
    async with live.http() as client:
        await sign_in(client, live.keys["reader"])
        assert link not in (await client.get(base)).text
        assert (await client.get(f"{base}/playground")).status_code == 422  # where the link led
        async with live.api() as api:
            await create_version(api, name, "Hello {{ name }}")
        assert link in (await client.get(base)).text
        assert (await client.get(f"{base}/playground")).status_code == 200
