"""Webhooks created, pinged and deleted with the sync and the async client, against a live registry."""

from __future__ import annotations

import pytest
from prompt_registry_client import (
    AsyncRegistryClient,
    CachePolicy,
    Conflict,
    NotFound,
    RegistryClient,
    ValidationFailed,
)

from tests.clients.conftest import Live

NO_FEED = CachePolicy(watch_changes=False)


def test_a_webhook_is_created_with_its_secret_pinged_and_deleted(live: Live) -> None:
    with RegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        created = registry.create_webhook(
            "http://127.0.0.1:9/hooks", ["prompt.*", "experiment.started"], description="CI"
        )
        assert created["secret"].startswith("whsec_")
        webhook = created["webhook"]
        assert (webhook["url"], webhook["events"], webhook["description"], webhook["enabled"]) == (
            "http://127.0.0.1:9/hooks",
            ["experiment.started", "prompt.*"],
            "CI",
            True,
        )
        shown = registry.get_webhook(webhook["id"])
        assert "secret" not in shown, "the secret is shown at creation only"
        assert [w["id"] for w in registry.list_webhooks()] == [webhook["id"]]

        assert registry.ping_webhook(webhook["id"]) is None
        assert [d["event_type"] for d in registry.webhook_deliveries(webhook["id"])] == ["ping"]

        assert registry.delete_webhook(webhook["id"]) is None
        assert list(registry.list_webhooks()) == []
        with pytest.raises(NotFound) as gone:
            registry.get_webhook(webhook["id"])
        assert gone.value.type == "webhook_not_found"


def test_deleting_or_pinging_a_webhook_that_does_not_exist_raises_not_found(live: Live) -> None:
    with RegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        with pytest.raises(NotFound) as deleted:
            registry.delete_webhook(999_999)
        assert (deleted.value.status, deleted.value.type) == (404, "webhook_not_found")
        assert "999999" in deleted.value.detail
        with pytest.raises(NotFound) as pinged:
            registry.ping_webhook(999_999)
        assert (pinged.value.status, pinged.value.type) == (404, "webhook_not_found")


def test_a_webhook_with_a_bad_url_is_refused_naming_the_field_and_none_is_created(live: Live) -> None:
    with RegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        with pytest.raises(ValidationFailed) as refused:
            registry.create_webhook("ftp://example.com/hooks", ["*"])
        assert refused.value.status == 422
        assert [e["field"] for e in refused.value.errors] == ["url"]
        assert list(registry.list_webhooks()) == []


def test_pinging_a_disabled_webhook_raises_conflict_and_queues_nothing(live: Live) -> None:
    with RegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        webhook_id = registry.create_webhook("http://127.0.0.1:9/paused", ["*"])["webhook"]["id"]
        registry.disable_webhook(webhook_id)
        with pytest.raises(Conflict) as refused:
            registry.ping_webhook(webhook_id)
        assert (refused.value.status, refused.value.type) == (409, "webhook_disabled")
        assert list(registry.webhook_deliveries(webhook_id)) == []


async def test_the_async_client_creates_pings_and_deletes_a_webhook(live: Live) -> None:
    async with AsyncRegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        created = await registry.create_webhook("http://127.0.0.1:9/async", ["*"])
        assert created["secret"].startswith("whsec_")
        webhook_id = created["webhook"]["id"]
        assert await registry.ping_webhook(webhook_id) is None
        assert [d["event_type"] async for d in registry.webhook_deliveries(webhook_id)] == ["ping"]
        assert await registry.delete_webhook(webhook_id) is None
        assert [w async for w in registry.list_webhooks()] == []
        with pytest.raises(NotFound):
            await registry.delete_webhook(webhook_id)
        with pytest.raises(NotFound):
            await registry.ping_webhook(webhook_id)
        with pytest.raises(ValidationFailed) as refused:
            await registry.create_webhook("not a url", ["*"])
        assert [e["field"] for e in refused.value.errors] == ["url"]
