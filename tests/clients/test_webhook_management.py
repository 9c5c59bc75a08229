"""Webhooks enabled, disabled and listed by state with the sync client, against a live registry."""

from __future__ import annotations

import pytest
from prompt_registry_client import CachePolicy, NotFound, RegistryClient

from tests.clients.conftest import Live

NO_FEED = CachePolicy(watch_changes=False)


def webhook(live: Live, url: str) -> int:
    created = live.ok(live.admin.post("/v1/webhooks", json={"url": url, "events": ["*"]}))
    return int(created["webhook"]["id"])


def test_a_webhook_is_disabled_and_enabled_again_and_listed_by_its_state(live: Live) -> None:
    kept, paused = webhook(live, "http://127.0.0.1:9/kept"), webhook(live, "http://127.0.0.1:9/paused")
    with RegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        disabled = registry.disable_webhook(paused)
        assert disabled["enabled"] is False
        assert disabled["disabled_at"] is not None
        assert disabled["disabled_reason"].startswith("disabled by ")
        assert registry.get_webhook(paused)["enabled"] is False
        assert [w["id"] for w in registry.list_webhooks(enabled=False)] == [paused]
        assert [w["id"] for w in registry.list_webhooks(enabled=True)] == [kept]
        assert sorted(w["id"] for w in registry.list_webhooks()) == sorted([kept, paused])

        enabled = registry.enable_webhook(paused)
        assert (enabled["enabled"], enabled["disabled_at"], enabled["disabled_reason"]) == (True, None, None)
        assert (enabled["consecutive_failures"], enabled["failing_since"]) == (0, None)
        assert list(registry.list_webhooks(enabled=False)) == []


def test_enabling_a_webhook_that_does_not_exist_raises_not_found(live: Live) -> None:
    with RegistryClient(live.url, live.key, cache=NO_FEED) as registry, pytest.raises(NotFound):
        registry.enable_webhook(999_999)
