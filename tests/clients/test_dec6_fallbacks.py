"""The fallback serves whenever the registry cannot: a key over its rate limit, a URL that answers as something else."""

from __future__ import annotations

from typing import Any

import pytest
from prompt_registry_client import (
    BatchPolicy,
    CachePolicy,
    RateLimited,
    RegistryClient,
    RetryPolicy,
    ServiceUnavailable,
)

from tests.clients.conftest import Live, ThreadedServer, text


def test_a_rate_limited_prompt_fetch_serves_the_fallback_instead_of_raising(live: Live) -> None:
    live.prompt("dec6-limited-a", text("a"))
    live.prompt("dec6-limited-b", text("b {{ name }}"))
    body = {"name": "dec6-limited", "scopes": ["read"], "rate_limit_per_minute": 1}
    created = live.ok(live.admin.post("/v1/keys", json=body))
    live.hold_the_minute()
    no_feed, once = CachePolicy(watch_changes=False), RetryPolicy(attempts=1)
    with RegistryClient(live.url, created["key"], cache=no_feed, retries=once) as registry:
        assert registry.get_prompt("dec6-limited-a").version == 1  # the key's one request of this minute
        served = registry.render("dec6-limited-b", {"name": "Ada"}, fallback="Hi {{ name }}")
        with pytest.raises(RateLimited):
            registry.get_prompt("dec6-limited-b")  # without a fallback the refusal is the caller's to see
    assert (served.text, served.fallback) == ("Hi Ada", True)


async def html_page(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What a URL that is not the registry's may answer to anything (a web app's page, a proxy's): 200, HTML."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": b"<html><body>Welcome</body></html>"})


def test_an_answer_that_is_not_the_registrys_serves_the_fallback_instead_of_raising() -> None:
    server = ThreadedServer(html_page, lifespan="off")
    url = server.start()
    try:
        with RegistryClient(url, "prk_test", cache=CachePolicy(watch_changes=False)) as registry:
            served = registry.render("dec6-html", {"name": "Ada"}, unit="user-1", fallback="Hi {{ name }}")
            with pytest.raises(ServiceUnavailable):
                registry.get_prompt("dec6-html")
    finally:
        server.stop()
    assert (served.text, served.fallback) == ("Hi Ada", True)


ASKED: list[str] = []  # the paths ``not_configured`` was asked


async def not_configured(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The registry's answer to a completion whose config names a backend this deployment lacks: 503, no
    Retry-After (no later try can succeed)."""
    ASKED.append(scope["path"])
    headers = [(b"content-type", b"application/problem+json")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    body = b'{"type": "/problems/backend_not_configured", "title": "Backend not configured", "status": 503}'
    await send({"type": "http.response.body", "body": body})


def test_a_completion_refused_with_a_503_that_names_no_retry_after_is_asked_once() -> None:
    server = ThreadedServer(not_configured, lifespan="off")
    url = server.start()
    try:
        with (
            RegistryClient(url, "prk_test", cache=CachePolicy(watch_changes=False)) as registry,
            pytest.raises(ServiceUnavailable),
        ):
            registry.complete("dec6-unconfigured")
    finally:
        server.stop()
    assert ASKED == ["/v1/prompts/dec6-unconfigured/complete"]  # not three times, as a 503 with Retry-After is


def test_events_answered_by_something_else_than_the_registry_wait_to_be_sent_again() -> None:
    """A 200 HTML page for the events (a proxy's, a misrouted URL) took nothing in: the batch was lost uncounted
    and ``flush`` raised on its JSON."""
    server = ThreadedServer(html_page, lifespan="off")
    url = server.start()
    batches = BatchPolicy(flush_interval=3600, close_timeout=0)
    try:
        registry = RegistryClient(url, "prk_test", cache=CachePolicy(watch_changes=False), batches=batches)
        registry.track("user-1", "dec6-score", 1.0)
        assert registry.flush() is False
        assert registry.pending_events == 1
        registry.close()
    finally:
        server.stop()
