"""The client's cache against a live registry: hits, background refresh, the change feed, outages."""

from __future__ import annotations

import time

import pytest
from prompt_registry_client import CachePolicy, RegistryClient, RetryPolicy, ServiceUnavailable

from tests.clients.conftest import Live, LiveFactory, Recorder, RecordingTransport, text

NO_FEED = CachePolicy(ttl=60, watch_changes=False)


def client_for(live: Live, recorder: Recorder, **options: object) -> RegistryClient:
    return RegistryClient(live.url, live.key, transport=RecordingTransport(recorder), **options)  # type: ignore[arg-type]


def wait_for(check: object, timeout: float) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    started = time.perf_counter()
    while not check():  # type: ignore[operator]
        assert time.perf_counter() - started < timeout, "not within the time allowed"
        time.sleep(0.005)
    return time.perf_counter() - started


def test_a_cached_prompt_is_served_without_a_request(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    recorder = Recorder()
    with client_for(live, recorder, cache=NO_FEED) as registry:
        first = registry.get_prompt("greet")
        fetched = recorder.count("GET /v1/prompts/greet")
        started = time.perf_counter()
        for _ in range(1000):
            again = registry.get_prompt("greet")
        per_get = (time.perf_counter() - started) / 1000
        rendered = registry.render("greet", {"name": "Ada"})
    assert fetched == 1
    assert recorder.count("GET /v1/prompts/greet") == 1, "the cache answers without a request"
    assert again == first
    assert rendered.text == "Hello Ada!"
    assert per_get < 0.001, f"a cached get took {per_get * 1e6:.0f} µs"


def test_an_expired_prompt_is_served_at_once_and_refreshed_in_the_background(live: Live) -> None:
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    recorder = Recorder()
    with client_for(live, recorder, cache=CachePolicy(ttl=0.2, watch_changes=False)) as registry:
        assert registry.get_prompt("greet").version == 1
        live.promote("greet", 2)
        time.sleep(0.25)
        started = time.perf_counter()
        stale = registry.get_prompt("greet")
        served_in = time.perf_counter() - started
        wait_for(lambda: registry.get_prompt("greet").version == 2, timeout=2)
    assert stale.version == 1, "the expired copy is served at once"
    assert not stale.stale, "an expired copy is not an outage"
    assert served_in < 0.005
    assert recorder.count("GET /v1/prompts/greet") == 2


def test_an_unchanged_prompt_is_revalidated_with_a_304(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    recorder = Recorder()
    with client_for(live, recorder, cache=CachePolicy(ttl=0.1, watch_changes=False)) as registry:
        first = registry.get_prompt("greet")
        time.sleep(0.15)
        registry.get_prompt("greet")
        wait_for(lambda: recorder.statuses["GET /v1/prompts/greet 304"] == 1, timeout=2)
        assert registry.get_prompt("greet") == first
    assert recorder.statuses["GET /v1/prompts/greet 200"] == 1


def test_a_promotion_and_a_rollback_reach_a_running_client_through_the_change_feed(live: Live) -> None:
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    with RegistryClient(live.url, live.key, cache=CachePolicy(ttl=600)) as registry:
        assert registry.get_prompt("greet").version == 1
        time.sleep(0.3)  # the feed connects when the first prompt is cached
        live.promote("greet", 2)
        promoted_in = wait_for(lambda: registry.get_prompt("greet").version == 2, timeout=2)
        live.ok(live.admin.post("/v1/prompts/greet/rollback", json={"reason": "v2 is worse"}))
        rolled_back_in = wait_for(lambda: registry.get_prompt("greet").version == 1, timeout=2)
    assert promoted_in < 2
    assert rolled_back_in < 2


def test_with_the_service_stopped_the_cache_then_the_fallback_serve_else_a_typed_error(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    live.prompt("farewell", text("Bye {{ name }}!"))
    fast = RetryPolicy(attempts=2, backoff=0.01)
    with RegistryClient(live.url, live.key, cache=CachePolicy(ttl=0.1), retries=fast) as registry:
        registry.get_prompt("greet")
        live.stop()
        time.sleep(0.15)
        cached = registry.render("greet", {"name": "Ada"})
        time.sleep(0.05)
        still = registry.get_prompt("greet")
        chat = [{"role": "user", "content": "Bye, {{ name }}"}]
        fallback = registry.render("farewell", {"name": "Ada"}, fallback=chat)
        started = time.perf_counter()
        with pytest.raises(ServiceUnavailable):
            registry.get_prompt("farewell")
        failed_in = time.perf_counter() - started
    assert cached.text == "Hello Ada!"
    assert still.version == 1
    assert fallback.fallback
    assert fallback.version is None
    assert fallback.to_messages() == [{"role": "user", "content": "Bye, Ada"}]
    assert failed_in < 1


def test_a_copy_invalidated_while_the_service_is_away_is_still_served(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    fast = RetryPolicy(attempts=1)
    with RegistryClient(
        live.url, live.key, cache=NO_FEED, retries=fast, fallbacks={"greet": "Hi {{ name }}"}
    ) as registry:
        registry.get_prompt("greet")
        registry._core.prompts.invalidate_all()  # as a reconnect of the change feed does
        live.stop()
        served = registry.render("greet", {"name": "Ada"})
    assert served.text == "Hello Ada!"
    assert served.stale


def test_a_change_missed_while_disconnected_is_caught_when_the_feed_reconnects(
    live: Live, live_registry: LiveFactory
) -> None:
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    other_replica = live_registry()
    with RegistryClient(live.url, live.key, cache=CachePolicy(ttl=600)) as registry:
        assert registry.get_prompt("greet").version == 1
        time.sleep(0.3)
        live.stop()
        other_replica.promote("greet", 2)  # the client's replica is down: no change event reaches it
        time.sleep(0.2)
        assert registry.get_prompt("greet").version == 1, "the last copy serves meanwhile"
        live.restart()
        reconnected_in = wait_for(lambda: registry.get_prompt("greet").version == 2, timeout=3)
    assert reconnected_in < 3
