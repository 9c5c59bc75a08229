"""A key's rate limit or budget the console refuses shows its form again with what was typed.

The page came back with the error above and the key's stored values in the form: the refused value to correct was
gone, and so was the other value typed beside it (a cost with a mistyped token count).
"""

from __future__ import annotations

import re
from html import unescape

from tests.console.conftest import LiveRegistry
from tests.console.seed import unique
from tests.console.test_dec6_refused_forms import csrf_of, sign_in


def value_of(html: str, name: str) -> str:
    found = re.search(rf'<input [^>]*name="{name}"[^>]* value="([^"]*)"', html)
    assert found is not None, f"no input {name}"
    return unescape(found.group(1))


async def test_a_refused_limit_keeps_what_was_typed(live: LiveRegistry) -> None:
    async with live.api() as api:
        created = await api.post("/v1/keys", json={"name": unique("limits-form"), "scopes": ["read"]})
        assert created.status_code == 201, created.text
        key_id = created.json()["api_key"]["id"]
        budget = {"monthly_tokens": 5000, "monthly_cost": 12.5}
        assert (await api.put(f"/v1/keys/{key_id}/budget", json=budget)).status_code == 200
    page_url = f"/console/keys/{key_id}"
    async with live.http() as client:
        await sign_in(client, live.keys["admin"])
        csrf = csrf_of((await client.get(page_url)).text)

        refused = await client.post(
            f"{page_url}/budget", data={"csrf": csrf, "monthly_tokens": "20k", "monthly_cost": "$40"}
        )
        assert refused.status_code == 400
        assert "Tokens per month must be a whole number" in refused.text
        assert (value_of(refused.text, "monthly_tokens"), value_of(refused.text, "monthly_cost")) == ("20k", "$40")

        refused = await client.post(f"{page_url}/rate-limit", data={"csrf": csrf, "per_minute": "12.5"})
        assert refused.status_code == 400
        assert value_of(refused.text, "per_minute") == "12.5"
        # The other form still shows what is stored: nothing of it was sent.
        assert (value_of(refused.text, "monthly_tokens"), value_of(refused.text, "monthly_cost")) == ("5000", "12.5")
