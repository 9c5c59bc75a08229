"""A key over its rate limit: the registry refuses for the rest of its minute, and the fallback serves."""

from __future__ import annotations

import pytest
from prompt_registry_client import CachePolicy, RateLimited, RegistryClient, RetryPolicy

from tests.clients.conftest import Live, text


def test_a_rate_limited_prompt_fetch_serves_the_fallback_instead_of_raising(live: Live) -> None:
    live.prompt("dec6-limited-a", text("a"))
    live.prompt("dec6-limited-b", text("b {{ name }}"))
    body = {"name": "dec6-limited", "scopes": ["read"], "rate_limit_per_minute": 1}
    created = live.ok(live.admin.post("/v1/keys", json=body))
    no_feed, once = CachePolicy(watch_changes=False), RetryPolicy(attempts=1)
    with RegistryClient(live.url, created["key"], cache=no_feed, retries=once) as registry:
        assert registry.get_prompt("dec6-limited-a").version == 1  # the key's one request of this minute
        served = registry.render("dec6-limited-b", {"name": "Ada"}, fallback="Hi {{ name }}")
        with pytest.raises(RateLimited):
            registry.get_prompt("dec6-limited-b")  # without a fallback the refusal is the caller's to see
    assert (served.text, served.fallback) == ("Hi Ada", True)
