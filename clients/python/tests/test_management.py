"""The management calls the ``registry`` command uses: each sends the request the API documents.

A recording ``httpx.MockTransport`` answers, so these check the client's side of the contract;
the CLI tests run the same calls against a live registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prompt_registry_client import CachePolicy, NotFound, RegistryClient


class Recorded:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if "/missing" in request.url.path:
            return httpx.Response(404, json={"type": "not_found", "title": "Not found", "detail": "no such thing"})
        if request.url.path.endswith("/export"):
            return httpx.Response(200, content=b"unit,variant\nu1,control\n", headers={"content-type": "text/csv"})
        listing = request.url.path in ("/v1/metrics", "/v1/webhooks", "/v1/audit")
        if request.method == "GET" and (listing or request.url.path.endswith("/deliveries")):
            cursor = request.url.params.get("cursor")
            page = {"items": [{"n": 2}], "next_cursor": None} if cursor else {"items": [{"n": 1}], "next_cursor": "c"}
            return httpx.Response(200, json=page)
        return httpx.Response(200, json={"ok": True})

    def sent(self, index: int = -1) -> tuple[str, str, dict[str, Any] | None]:
        request = self.requests[index]
        body = json.loads(request.content) if request.content else None
        return request.method, str(request.url).removeprefix("http://registry"), body


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


@pytest.fixture
def client(recorded: Recorded) -> Iterator[RegistryClient]:
    transport = httpx.MockTransport(recorded.handle)
    with RegistryClient(
        "http://registry", "prk_key", transport=transport, cache=CachePolicy(watch_changes=False)
    ) as registry:
        yield registry


def test_resolve_asks_the_service_for_a_label_or_a_version(client: RegistryClient, recorded: Recorded) -> None:
    client.resolve("support/summarize", label="staging")
    assert recorded.sent() == ("GET", "/v1/prompts/support%2Fsummarize?label=staging", None)
    client.resolve("small", "configs", version=3)
    assert recorded.sent() == ("GET", "/v1/configs/small?version=3", None)


def test_resources_and_versions_are_created_with_the_api_bodies(client: RegistryClient, recorded: Recorded) -> None:
    client.create_resource("greet", tags=["a", "b"], description="hi")
    assert recorded.sent() == ("POST", "/v1/prompts", {"name": "greet", "description": "hi", "tags": ["a", "b"]})
    client.create_version("support/summarize", {"kind": "text", "template": "Hi"})
    assert recorded.sent() == ("POST", "/v1/prompts/support%2Fsummarize/versions", {"kind": "text", "template": "Hi"})
    client.get_version("small", 2, "configs")
    assert recorded.sent() == ("GET", "/v1/configs/small/versions/2", None)


def test_render_on_service_posts_the_variables(client: RegistryClient, recorded: Recorded) -> None:
    client.render_on_service("greet", {"name": "Ada"}, unit="u1")
    body = {"variables": {"name": "Ada"}, "label": None, "version": None, "unit": "u1"}
    assert recorded.sent() == ("POST", "/v1/prompts/greet/render", body)


def test_listings_follow_the_cursor_to_the_last_page(client: RegistryClient, recorded: Recorded) -> None:
    assert list(client.list_metrics()) == [{"n": 1}, {"n": 2}]
    assert list(client.list_webhooks()) == [{"n": 1}, {"n": 2}]
    assert list(client.webhook_deliveries(7, status="dead")) == [{"n": 1}, {"n": 2}]
    assert recorded.sent() == ("GET", "/v1/webhooks/7/deliveries?status=dead&limit=200&cursor=c", None)
    assert list(client.audit(actor="cli:ada")) == [{"n": 1}, {"n": 2}]
    assert recorded.sent(-2) == ("GET", "/v1/audit?actor=cli%3Aada&limit=200", None)


def test_metrics_usage_and_redelivery_reach_their_routes(client: RegistryClient, recorded: Recorded) -> None:
    client.create_metric({"key": "converted", "kind": "binomial"})
    assert recorded.sent() == ("POST", "/v1/metrics", {"key": "converted", "kind": "binomial"})
    client.usage(group_by=["prompt", "day"], since="2026-01-01", prompt=None)
    assert recorded.sent() == ("GET", "/v1/usage?group_by=prompt&group_by=day&since=2026-01-01", None)
    client.redeliver(7, 42)
    assert recorded.sent() == ("POST", "/v1/webhooks/7/deliveries/42/redeliver", None)


def test_an_export_streams_the_file_and_an_error_raises_before_any_byte(
    client: RegistryClient, recorded: Recorded
) -> None:
    with client.export_experiment("greet-test", phase=2) as chunks:
        assert b"".join(chunks) == b"unit,variant\nu1,control\n"
    assert recorded.sent() == ("GET", "/v1/experiments/greet-test/export?format=csv&phase=2", None)
    with pytest.raises(NotFound, match="no such thing"), client.export_experiment("missing"):
        pass
    with pytest.raises(NotFound):
        client.get_experiment_definition("missing")
